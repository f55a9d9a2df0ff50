package e2e

import (
	"bufio"
	"database/sql"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCLIEnrollTokenAndCurl runs the README's agent-side commands: enroll
// with the CLI, approve, then sign a request with `caddy mastio token
// --request` and send it with curl.
func TestCLIEnrollTokenAndCurl(t *testing.T) {
	s, _ := tokenServer(t)
	idDir := filepath.Join(t.TempDir(), "identity")
	enroll := exec.Command(caddyBin, "mastio", "enroll", "--url", s.url(""), "--dir", idDir,
		"--ca", filepath.Join(s.dataDir, "pki", "org-ca.crt"), "--name", "CLI Agent", "--email", "cli@orga.example", "--timeout", "1m")
	stderr, _ := enroll.StderrPipe()
	var stdout strings.Builder
	enroll.Stdout = &stdout
	if err := enroll.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	var sid string
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 2 && f[0] == "enrollment" && f[1] == "session" {
			sid = f[2]
			break
		}
	}
	go io.Copy(io.Discard, stderr)
	if sid == "" {
		enroll.Wait()
		t.Fatal("caddy mastio enroll printed no session")
	}
	if code, body := s.adminCall(t, "POST", "/v1/admin/enrollments/"+sid+"/approve", adminSecret,
		map[string]any{"agent_id": "cli-agent", "capabilities": []string{"api:read"}}); code != 200 {
		t.Fatalf("approve: %d %v", code, body["_raw"])
	}
	done := make(chan error, 1)
	go func() { done <- enroll.Wait() }()
	select {
	case err := <-done:
		if err != nil || strings.TrimSpace(stdout.String()) != "orga::cli-agent" {
			t.Fatalf("enroll: %v %q", err, stdout.String())
		}
	case <-time.After(30 * time.Second):
		enroll.Process.Kill()
		t.Fatal("caddy mastio enroll did not finish after approval")
	}
	if m := fileMode(t, filepath.Join(idDir, "agent.key")); m != 0o600 {
		t.Fatalf("agent.key mode %04o", m)
	}

	// The README's copy-paste example, on the route Caddyfile.example
	// serves, in the form the help shows and in the comma form.
	url := s.url("/whoami")
	for _, form := range []string{" --request GET " + url, " --request GET," + url} {
		script := caddyBin + ` mastio token --dir ` + idDir + form + ` | curl -sS -H @- --cacert ` + idDir + `/ca.crt --cert ` +
			idDir + `/agent.crt --key ` + idDir + `/agent.key ` + url
		out, err := exec.Command("bash", "-c", "set -o pipefail; "+script).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `"agent_id":"orga::cli-agent"`) || !strings.Contains(string(out), `"scope":"api:read"`) {
			t.Fatalf("token%s | curl: %v\n%s", form, err, out)
		}
	}
	tok, err := exec.Command(caddyBin, "mastio", "token", "--dir", idDir).Output()
	if err != nil || strings.Count(strings.TrimSpace(string(tok)), ".") != 2 {
		t.Fatalf("caddy mastio token: %v %q", err, tok)
	}

	s.stop()
	out, err := exec.Command(caddyBin, "mastio", "audit", "verify", "--db", filepath.Join(s.dataDir, "mastio.db")).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "OK: ") {
		t.Fatalf("caddy mastio audit verify: %v %s", err, out)
	}
	// Tamper with row 3 as someone with the file could, and verify again.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(s.dataDir, "mastio.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`DROP TRIGGER audit_events_no_update`, `UPDATE audit_events SET actor = 'someone-else' WHERE seq = 3`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	out, err = exec.Command(caddyBin, "mastio", "audit", "verify", "--db", filepath.Join(s.dataDir, "mastio.db")).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.HasPrefix(string(out), "BROKEN at seq 3:") {
		t.Fatalf("verify after tampering: %v %s", err, out)
	}
}
