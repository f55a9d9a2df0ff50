package e2e

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// exportedRow is a row of GET /v1/admin/audit/export.
type exportedRow struct {
	Seq     int64           `json:"seq"`
	Time    string          `json:"time"`
	Type    string          `json:"event_type"`
	Subject string          `json:"subject"`
	Details json.RawMessage `json:"details"`
	Hash    string          `json:"hash"`
}

func (s *server) exportAudit(t *testing.T) []exportedRow {
	t.Helper()
	code, _, body := s.get(s.client(), "/v1/admin/audit/export", "X-Admin-Secret", adminSecret)
	if code != 200 {
		t.Fatalf("export: %d %s", code, body)
	}
	var rows []exportedRow
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r exportedRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		rows = append(rows, r)
	}
	return rows
}

// operator runs a caddy mastio command as the operator would on the
// gateway's machine: the admin secret in the environment, the defaults
// taken from the data directory.
func (s *server) operator(args ...string) (string, int) {
	cmd := s.command(append([]string{"mastio"}, args...)...)
	cmd.Env = append(cmd.Env, "MASTIO_ADMIN_SECRET="+adminSecret, "MASTIO_URL="+s.url(""))
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	if err != nil {
		s.t.Fatalf("caddy %s: %v", strings.Join(args, " "), err)
	}
	return string(out), 0
}

// TestAuditArchiveKeepsBothHalvesVerifiable is runbook §2 (disk full): the
// operator archives the rows before a date; the archive verifies on its
// own, the database verifies from the signed anchor the archive left,
// before and after a restart and as the chain grows; a forged anchor is
// caught.
func TestAuditArchiveKeepsBothHalvesVerifiable(t *testing.T) {
	s := exampleServer(t, "", "")
	for i := range 4 {
		if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": fmt.Sprintf("old-%d", i)}); code != 201 {
			t.Fatalf("create agent: %d %v", code, body)
		}
	}
	rows := s.exportAudit(t)
	// The cut: the last agent.created row; everything stamped before it goes.
	cut := -1
	for i, r := range rows {
		if r.Type == "agent.created" && i > 0 && rows[i-1].Time < r.Time {
			cut = i
		}
	}
	if cut < 0 {
		t.Fatalf("no agent.created row to cut at in %+v", rows)
	}
	last := rows[cut-1]
	archive := filepath.Join(s.dir, "audit-archive.tar.gz")
	ca := filepath.Join(s.dataDir, "pki", "org-ca.crt")
	db := filepath.Join(s.dataDir, "mastio.db")

	out, code := s.operator("audit", "archive", "--before", rows[cut].Time, "--out", archive, "--data-dir", s.dataDir)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("archived seq 1-%d (%d rows) to %s", last.Seq, last.Seq, archive)) {
		t.Fatalf("archive: exit %d\n%s", code, out)
	}
	out, code = s.operator("audit", "verify", archive, "--ca", ca, "--witness", fmt.Sprintf("%d:%s", last.Seq, last.Hash))
	if code != 0 || !strings.Contains(out, "OK: the bundle verifies") {
		t.Fatalf("the archive on its own: exit %d\n%s", code, out)
	}
	wantAnchor := fmt.Sprintf("from the signed archive anchor at seq %d", last.Seq)
	out, code = s.operator("audit", "verify", "--db", db)
	if code != 0 || !strings.Contains(out, wantAnchor) {
		t.Fatalf("the database while serving: exit %d\n%s", code, out)
	}
	after := s.exportAudit(t)
	if after[0].Seq != last.Seq+1 || after[0].Hash != rows[cut].Hash {
		t.Fatalf("the first row left is %+v, want row %d", after[0], last.Seq+1)
	}
	if r := after[len(after)-1]; r.Type != "audit.archived" {
		t.Fatalf("the newest row is %s, want audit.archived", r.Type)
	}
	// Archived rows cannot be bundled again or archived twice.
	if out, code := s.operator("audit", "archive", "--before", rows[cut].Time, "--out", archive+".again", "--data-dir", s.dataDir); code != 0 ||
		!strings.Contains(out, "nothing to archive") {
		t.Fatalf("archiving again: exit %d\n%s", code, out)
	}
	if code, body := s.adminCall(t, "POST", "/v1/admin/audit/bundle", adminSecret, map[string]any{"from_seq": 1}); code != 400 ||
		!strings.Contains(body["message"].(string), "were archived") {
		t.Fatalf("bundle of archived rows: %d %v", code, body)
	}

	// Restart; the chain grows; both halves still verify.
	s.stop()
	if out, code := s.operator("audit", "verify", "--db", db); code != 0 || !strings.Contains(out, wantAnchor) {
		t.Fatalf("the database stopped: exit %d\n%s", code, out)
	}
	s.start()
	if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "new-0"}); code != 201 {
		t.Fatalf("create agent after restart: %d %v", code, body)
	}
	if out, code := s.operator("audit", "verify", "--db", db); code != 0 || !strings.Contains(out, wantAnchor) {
		t.Fatalf("the database after restart: exit %d\n%s", code, out)
	}
	rest := filepath.Join(s.dir, "audit-rest.tar.gz")
	if out, code := s.operator("audit", "archive", "--before", "0d", "--out", rest, "--data-dir", s.dataDir); code != 0 ||
		!strings.Contains(out, fmt.Sprintf("archived seq %d-", last.Seq+1)) {
		t.Fatalf("archiving the rest: exit %d\n%s", code, out)
	}
	if out, code := s.operator("audit", "verify", rest, "--ca", ca); code != 0 {
		t.Fatalf("the second archive: exit %d\n%s", code, out)
	}

	// Someone with the file moves the anchor on by a row and deletes it
	// (the schema allows deletes up to the anchor): the anchor's signature
	// no longer matches, and verify says so.
	s.stop()
	if out, code := s.operator("audit", "verify", "--db", db); code != 0 {
		t.Fatalf("before forging: exit %d\n%s", code, out)
	}
	sqldb, err := sql.Open("sqlite", "file:"+db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqldb.Exec(`DELETE FROM audit_events`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("a manual DELETE: %v, want it refused", err)
	}
	var next int64
	for _, q := range []string{
		`UPDATE audit_anchor SET seq = (SELECT MIN(seq) FROM audit_events), hash = (SELECT hash FROM audit_events ORDER BY seq LIMIT 1)`,
		`DELETE FROM audit_events WHERE seq <= (SELECT seq FROM audit_anchor)`,
	} {
		if _, err := sqldb.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	sqldb.QueryRow(`SELECT seq FROM audit_anchor`).Scan(&next)
	sqldb.Close() // the verifier runs as the server's user: leave no -wal of ours
	out, code = s.operator("audit", "verify", "--db", db)
	if code != 1 || !strings.Contains(out, fmt.Sprintf("BROKEN at seq %d: archive anchor at seq %d", next, next)) ||
		!strings.Contains(out, "its checkpoint is of row") {
		t.Fatalf("a forged anchor: exit %d\n%s", code, out)
	}
}

// TestAuditVerifierReportsABreak: someone with the database file changes
// a row while the gateway runs; the background verifier finds it, logs
// it, counts it and fails /readyz naming the row; once the row is put
// back, the gateway is ready again by itself.
func TestAuditVerifierReportsABreak(t *testing.T) {
	s := exampleServer(t, "audit_verify_interval 1s", "")
	if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "watched"}); code != 201 {
		t.Fatalf("create agent: %d %v", code, body)
	}
	rows := s.exportAudit(t)
	head := rows[len(rows)-1].Seq
	waitFor(t, "the verifier to reach the head", 10*time.Second, func() bool {
		return int64(s.metric(t, "caddy_mastio_audit_chain_verified_seq")) >= head
	})
	if got := s.metric(t, "caddy_mastio_audit_chain_broken"); got != 0 {
		t.Fatalf("caddy_mastio_audit_chain_broken = %v before tampering", got)
	}

	db, err := sql.Open("sqlite", "file:"+filepath.Join(s.dataDir, "mastio.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	target := rows[1].Seq
	var actor string
	db.QueryRow(`SELECT actor FROM audit_events WHERE seq = ?`, target).Scan(&actor)
	for _, q := range []string{`DROP TRIGGER audit_events_no_update`, fmt.Sprintf(`UPDATE audit_events SET actor = 'mallory' WHERE seq = %d`, target)} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	var ready map[string]any
	waitFor(t, "/readyz to report the break", 30*time.Second, func() bool {
		code, _, body := s.get(s.client(), "/readyz")
		json.Unmarshal([]byte(body), &ready)
		return code == 503
	})
	reasons, _ := ready["reasons"].(map[string]any)
	if reasons["audit_chain"] != fmt.Sprintf("broken_at_seq_%d", target) {
		t.Fatalf("/readyz: %v", ready)
	}
	if got := s.metric(t, "caddy_mastio_audit_chain_broken"); got != 1 {
		t.Fatalf("caddy_mastio_audit_chain_broken = %v", got)
	}
	if got := s.metric(t, "caddy_mastio_audit_chain_breaks_total"); got != 1 {
		t.Fatalf("caddy_mastio_audit_chain_breaks_total = %v", got)
	}
	logs := grepLines(s.out.String(), `"msg":"audit chain broken"`)
	if !contains(logs, `"level":"error"`, fmt.Sprintf(`"seq":%d`, target), "does not match the row content") {
		t.Fatalf("the error log: %q", logs)
	}

	if _, err := db.Exec(`UPDATE audit_events SET actor = ? WHERE seq = ?`, actor, target); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "/readyz to recover", 30*time.Second, func() bool {
		code, _, _ := s.get(s.client(), "/readyz")
		return code == 200
	})
	if got := s.metric(t, "caddy_mastio_audit_chain_broken"); got != 0 {
		t.Fatalf("caddy_mastio_audit_chain_broken = %v after the repair", got)
	}
}
