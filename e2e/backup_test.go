package e2e

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
	"github.com/caddy-mastio/caddy-mastio/internal/testutil"
)

// TestBackupUnderLoadRestoresEverything is the runbook's "Backup the
// deploy" and §2 "restore from the most recent backup": a backup taken
// while agents are created, enrollments started and agents call, restored
// into a fresh directory, serves the same Org CA, signing keys, agents and
// audit chain; a backup that was altered, or a wrong key, is refused and
// leaves nothing behind; a directory in use or not empty is refused.
func TestBackupUnderLoadRestoresEverything(t *testing.T) {
	s := exampleServer(t, "", "")
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(s.dir, "backup.key")
	writeFile(t, idFile, id.String()+"\n")
	os.Chmod(idFile, 0o600)

	// One agent to call with, before the load.
	code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "caller"})
	if code != 201 {
		t.Fatalf("create caller: %d %v", code, body)
	}
	caller := keyPair(t, body["cert_pem"].(string), body["private_key_pem"].(string))
	_, _, caBefore := s.get(s.client(), "/pki/ca.crt")
	_, _, jwksBefore := s.get(s.client(), "/.well-known/jwks.json")

	// The load: agents created, enrollments started, calls made, until
	// the backup is done. ackedBefore holds what was acknowledged before
	// the backup started: all of it must be in the backup.
	var mu sync.Mutex
	var agents, sessions []string
	var ackedAgents, ackedSessions int
	var calls atomic.Int64
	traffic := newLoad()
	traffic.loop(func(i int) {
		name := "load-" + strconv.Itoa(i)
		if code, _ := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": name}); code == 201 {
			mu.Lock()
			agents = append(agents, name)
			mu.Unlock()
		}
	})
	traffic.loop(func(i int) {
		if i >= 5 { // enrollment starts are rate limited per address
			time.Sleep(10 * time.Millisecond)
			return
		}
		p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), "id"),
			RootCAs: s.rootPool(), Requester: client.Requester{Name: "Load", Email: "load@orga.example"}})
		if err == nil {
			mu.Lock()
			sessions = append(sessions, p.SessionID)
			mu.Unlock()
		}
	})
	ac := newAgentClient(s, caller, true)
	traffic.loop(func(int) {
		if code, _, err := ac.get(t, "/v1/agents/me"); err == nil && code == 200 {
			calls.Add(1)
		}
	})
	waitFor(t, "load running", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(agents) >= 5 && len(sessions) >= 2 && calls.Load() >= 5
	})
	mu.Lock()
	ackedAgents, ackedSessions = len(agents), len(sessions)
	mu.Unlock()
	rowsBefore := s.exportAudit(t)

	file := filepath.Join(s.dir, "mastio.backup")
	out, code := s.operator("backup", "--out", file, "--recipient", id.Recipient().String(), "--data-dir", s.dataDir)
	traffic.halt()
	if code != 0 || !strings.Contains(out, "backup written to "+file) || !strings.Contains(out, "sqlite database at schema") {
		t.Fatalf("backup: exit %d\n%s", code, out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the backup file: %v %v", fi, err)
	}
	if raw, _ := os.ReadFile(file); strings.Contains(string(raw), "PRIVATE KEY") || !strings.HasPrefix(string(raw), "age-encryption.org/v1") {
		t.Fatal("the backup file is not age-encrypted")
	}
	if rows := s.exportAudit(t); rows[len(rows)-1].Type != "backup.created" && !hasType(rows, "backup.created") {
		t.Fatal("the backup was not audited")
	}
	t.Logf("backup under load: %d agents, %d enrollments, %d calls acknowledged before it", ackedAgents, ackedSessions, calls.Load())

	// Refusals, each leaving nothing behind.
	if out, code := s.operator("restore", file, "--data-dir", s.dataDir, "--identity", idFile); code == 0 ||
		!strings.Contains(out, "is in use by a running Mastio") {
		t.Fatalf("restore over the running data dir: exit %d\n%s", code, out)
	}
	fresh := workDir(t)
	target := filepath.Join(fresh, "data")
	other, _ := age.GenerateX25519Identity()
	otherFile := filepath.Join(s.dir, "other.key")
	writeFile(t, otherFile, other.String()+"\n")
	if out, code := s.operator("restore", file, "--data-dir", target, "--identity", otherFile); code == 0 ||
		!strings.Contains(out, "cannot be decrypted with the key or passphrase given") {
		t.Fatalf("restore with another key: exit %d\n%s", code, out)
	}
	raw, _ := os.ReadFile(file)
	tampered := filepath.Join(s.dir, "tampered.backup")
	bad := append([]byte(nil), raw...)
	bad[len(bad)/2] ^= 0x01
	writeFile(t, tampered, string(bad))
	if out, code := s.operator("restore", tampered, "--data-dir", target, "--identity", idFile); code == 0 ||
		!strings.Contains(out, "damaged or was altered") {
		t.Fatalf("restore of a tampered backup: exit %d\n%s", code, out)
	}
	cut := filepath.Join(s.dir, "cut.backup")
	writeFile(t, cut, string(raw[:len(raw)-100]))
	if out, code := s.operator("restore", cut, "--data-dir", target, "--identity", idFile); code == 0 ||
		!strings.Contains(out, "damaged or was altered") {
		t.Fatalf("restore of a cut backup: exit %d\n%s", code, out)
	}
	if entries, _ := os.ReadDir(fresh); len(entries) != 0 {
		t.Fatalf("refused restores left %v behind", entries)
	}

	// The restore, and a gateway on it.
	out, code = s.operator("restore", file, "--data-dir", target, "--identity", idFile)
	if code != 0 || !strings.Contains(out, "audit chain OK") {
		t.Fatalf("restore: exit %d\n%s", code, out)
	}
	s.stop()
	if out, code := s.operator("restore", file, "--data-dir", target, "--identity", idFile); code == 0 ||
		!strings.Contains(out, "is not empty") {
		t.Fatalf("restore over a restored dir without --force: exit %d\n%s", code, out)
	}
	if out, code := s.operator("audit", "verify", "--db", filepath.Join(target, "mastio.db")); code != 0 {
		t.Fatalf("verify the restored chain: exit %d\n%s", code, out)
	}
	r := newServer(t, fresh, strings.ReplaceAll(readCaddyfile(t, s), s.dataDir, target))
	r.configArgs = s.configArgs
	r.env = append(append([]string(nil), s.env...), "MASTIO_DATA_DIR="+target)
	r.httpsPort, r.httpPort, r.adminAddr = s.httpsPort, s.httpPort, s.adminAddr
	r.start()
	if _, _, ca := r.get(r.client(), "/pki/ca.crt"); ca != caBefore {
		t.Fatal("the restored gateway serves another Org CA")
	}
	if _, _, jwks := r.get(r.client(), "/.well-known/jwks.json"); jwks != jwksBefore && !strings.Contains(jwks, kidsOf(jwksBefore)) {
		t.Fatalf("the restored gateway has other signing keys:\n%s\nwas\n%s", jwks, jwksBefore)
	}
	ac = newAgentClient(r, caller, false)
	if code, me, err := ac.get(t, "/v1/agents/me"); err != nil || code != 200 {
		t.Fatalf("the caller on the restored gateway: %d %v %v", code, me, err)
	}
	code, list := r.adminCall(t, "GET", "/v1/admin/agents", adminSecret, nil)
	if code != 200 {
		t.Fatalf("list agents: %d %v", code, list)
	}
	for _, name := range agents[:ackedAgents] {
		if !strings.Contains(list["_raw"].(string), "orga::"+name+`"`) {
			t.Fatalf("agent %s, acknowledged before the backup, is not restored", name)
		}
	}
	code, enr := r.adminCall(t, "GET", "/v1/admin/enrollments", adminSecret, nil)
	for _, sid := range sessions[:ackedSessions] {
		if code != 200 || !strings.Contains(enr["_raw"].(string), sid) {
			t.Fatalf("enrollment %s, acknowledged before the backup, is not restored: %d", sid, code)
		}
	}
	after := r.exportAudit(t)
	for i, row := range rowsBefore {
		if i >= len(after) || after[i].Seq != row.Seq || after[i].Hash != row.Hash {
			t.Fatalf("audit row %d, acknowledged before the backup, is not restored as it was", row.Seq)
		}
	}
	r.stop()
	if out, code := r.operator("audit", "verify", "--db", filepath.Join(target, "mastio.db")); code != 0 {
		t.Fatalf("verify after the restored gateway ran: exit %d\n%s", code, out)
	}

	// --force keeps what it replaces.
	out, code = s.operator("restore", file, "--data-dir", target, "--identity", idFile, "--force")
	if code != 0 || !strings.Contains(out, "what was there is kept at "+target+".replaced-") {
		t.Fatalf("restore --force: exit %d\n%s", code, out)
	}
}

func hasType(rows []exportedRow, typ string) bool {
	for _, r := range rows {
		if r.Type == typ {
			return true
		}
	}
	return false
}

func readCaddyfile(t *testing.T, s *server) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, "Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// kidsOf returns the first kid of a JWKS document.
func kidsOf(jwks string) string {
	i := strings.Index(jwks, `"kid":"`)
	if i < 0 {
		return jwks
	}
	j := strings.Index(jwks[i+7:], `"`)
	return jwks[i : i+7+j+1]
}

// TestMigrateCheckSaysWhatAStartWouldDo: the upgrade guide's first step.
func TestMigrateCheckSaysWhatAStartWouldDo(t *testing.T) {
	s := exampleServer(t, "", "")
	s.stop()
	db := filepath.Join(s.dataDir, "mastio.db")
	if out, code := s.operator("migrate", "--check", "--data-dir", s.dataDir); code != 0 || !strings.Contains(out, "this binary's: nothing to do") {
		t.Fatalf("up to date: exit %d\n%s", code, out)
	}
	if out, code := s.operator("migrate", "--check", "--database", filepath.Join(s.dir, "none.db")); code != 0 ||
		!strings.Contains(out, "does not exist yet: a start creates it") {
		t.Fatalf("no database: exit %d\n%s", code, out)
	}
	// A newer release ran on it: this binary says it would refuse, and does.
	sqldb, err := sql.Open("sqlite", "file:"+db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sqldb.Exec(`INSERT INTO schema_migrations VALUES (99, 'from the future', '2027-01-01T00:00:00Z')`); err != nil {
		t.Fatal(err)
	}
	sqldb.Close()
	if asRoot() {
		os.Chown(db, testutil.NobodyUID, testutil.NobodyUID)
	}
	out, code := s.operator("migrate", "--check", "--data-dir", s.dataDir)
	if code != 1 || !strings.Contains(out, "schema version 99, newer than this binary's") {
		t.Fatalf("too new: exit %d\n%s", code, out)
	}
	if out, err := s.runCaddy("validate", "--config", filepath.Join(s.dir, "Caddyfile"), "--adapter", "caddyfile"); err == nil ||
		!strings.Contains(out, "schema version 99") {
		t.Fatalf("validate on a newer database: %v\n%s", err, out)
	}
}

// TestBackupAndRestoreOnPostgres follows the README's Postgres recipe: a
// shared deployment (keys sealed in the database) is backed up with
// caddy mastio backup and pg_dump, restored with caddy mastio restore and
// pg_restore into a new database, and the gateway started on them serves
// the same Org CA and agents, with the chain intact.
func TestBackupAndRestoreOnPostgres(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	dir := workDir(t)
	kekFile := filepath.Join(dir, "kek")
	writeFile(t, kekFile, base64.StdEncoding.EncodeToString(kek))
	os.Chmod(kekFile, 0o600)
	dbA := pgtest.Database(t)
	global := "\t\tdatabase {$MASTIO_DATABASE_URL}\n\t\tkey_encryption_key_file {$MASTIO_KEK_FILE}\n"
	s := exampleServer(t, global, "", "MASTIO_DATABASE_URL="+dbA, "MASTIO_KEK_FILE="+kekFile)
	code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "pg-agent"})
	if code != 201 {
		t.Fatalf("create agent: %d %v", code, body)
	}
	agent := keyPair(t, body["cert_pem"].(string), body["private_key_pem"].(string))
	_, _, caBefore := s.get(s.client(), "/pki/ca.crt")

	id, _ := age.GenerateX25519Identity()
	idFile := filepath.Join(s.dir, "backup.key")
	writeFile(t, idFile, id.String()+"\n")
	file := filepath.Join(s.dir, "pg.backup")
	out, code := s.operator("backup", "--out", file, "--recipient", id.Recipient().String(), "--data-dir", s.dataDir)
	if code != 0 || !strings.Contains(out, "postgres database") || !strings.Contains(out, "pg_dump") {
		t.Fatalf("backup: exit %d\n%s", code, out)
	}
	dump := filepath.Join(t.TempDir(), "mastio.dump")
	if out, err := exec.Command(pgtest.Tool(t, "pg_dump"), "--format=custom", "--file", dump, dbA).CombinedOutput(); err != nil {
		t.Fatalf("pg_dump: %v\n%s", err, out)
	}
	s.stop()

	fresh := workDir(t)
	target := filepath.Join(fresh, "data")
	out, code = s.operator("restore", file, "--data-dir", target, "--identity", idFile)
	if code != 0 || !strings.Contains(out, "restore it with pg_restore") {
		t.Fatalf("restore: exit %d\n%s", code, out)
	}
	restoredKEK := filepath.Join(target, "restored-config", "key-encryption-key")
	if got, err := os.ReadFile(restoredKEK); err != nil || strings.TrimSpace(string(got)) != base64.StdEncoding.EncodeToString(kek) {
		t.Fatalf("the key-encryption key in the backup: %v", err)
	}
	dbB := pgtest.Database(t)
	if out, err := exec.Command(pgtest.Tool(t, "pg_restore"), "--no-owner", "--dbname", dbB, dump).CombinedOutput(); err != nil {
		t.Fatalf("pg_restore: %v\n%s", err, out)
	}
	r := newServer(t, fresh, strings.ReplaceAll(readCaddyfile(t, s), s.dataDir, target))
	r.configArgs = s.configArgs
	r.env = append(append([]string(nil), s.env...), "MASTIO_DATA_DIR="+target, "MASTIO_DATABASE_URL="+dbB, "MASTIO_KEK_FILE="+restoredKEK)
	r.httpsPort, r.httpPort, r.adminAddr = s.httpsPort, s.httpPort, s.adminAddr
	r.start()
	if _, _, ca := r.get(r.client(), "/pki/ca.crt"); ca != caBefore {
		t.Fatal("the restored gateway serves another Org CA")
	}
	if code, _, err := newAgentClient(r, agent, false).get(t, "/v1/agents/me"); err != nil || code != 200 {
		t.Fatalf("the agent on the restored gateway: %d %v", code, err)
	}
	if code, _, body := r.get(r.client(), "/v1/admin/audit/verify", "X-Admin-Secret", adminSecret); code != 200 || !strings.Contains(body, `"ok":true`) {
		t.Fatalf("the restored chain: %d %s", code, body)
	}
}
