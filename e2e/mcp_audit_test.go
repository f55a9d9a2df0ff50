package e2e

// The gateway's audit rows under concurrency, a kill and audit_sync.

import (
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// callGateway makes workers×perWorker tools/call requests through
// /mcp/batch, from concurrent sessions of id; call i names
// delete_everything where deny(i) (refused with -32000), else
// get_forecast (echoed by the batch upstream). Every answer is checked.
func callGateway(t *testing.T, s *server, id *client.Identity, workers, perWorker int, deny func(i int) bool) {
	t.Helper()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess := id.Session()
			for i := 0; i < perWorker; i++ {
				name, want := "get_forecast", `"echo":"tools/call"`
				if deny(i) {
					name, want = "delete_everything", `"code":-32000`
				}
				body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":{"city":"Rome"}}}`, i, name)
				code, _, answer := rawMCP(t, s, sess, "/mcp/batch", nil, body)
				if code != 200 || !strings.Contains(answer, want) {
					t.Errorf("%s: %d %.300s", name, code, answer)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// Concurrent calls through the gateway, allowed and denied: every one is
// answered and has its own audit rows (an allowed one its mcp.forward and
// mcp.call rows), and the chain stays valid. Under this load the audit
// writer batches rows, and outcome rows ride with other calls' commits; a
// row lost or committed twice on that path shows in the counts. The
// outcome rows are read after the admin API's verify, which, like every
// audit read of the API, first commits the rows queued before it.
func TestMCPConcurrentCallsAreEachAudited(t *testing.T) {
	s := mcpServer(t)
	caller := makeIdentity(t, s, "busy", "mcp:call")
	db := openDB(t, s.dataDir)
	before := eventCounts(t, db)["mcp.call"]
	const workers, perWorker = 8, 12
	callGateway(t, s, caller, workers, perWorker, func(i int) bool { return i%3 == 2 })
	if code, body := s.adminCall(t, "GET", "/v1/admin/audit/verify", adminSecret, nil); code != 200 || body["ok"] != true ||
		body["outcome_unknown"].(map[string]any)["count"] != 0.0 {
		t.Fatalf("verify: %d %v", code, body)
	}
	counts := eventCounts(t, db)
	if rows := counts["mcp.call"] - before; rows != workers*perWorker || counts["mcp.forward"] != workers*perWorker*2/3 {
		t.Fatalf("%d calls answered (%d allowed), %d mcp.call and %d mcp.forward rows", workers*perWorker, workers*perWorker*2/3,
			rows, counts["mcp.forward"])
	}
	var denied int
	if err := db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call' AND result = 'denied' AND actor LIKE '%busy'`).Scan(&denied); err != nil {
		t.Fatal(err)
	}
	if denied != workers*perWorker/3 {
		t.Fatalf("%d denied rows, want %d", denied, workers*perWorker/3)
	}
	verifyChain(t, db)
	closeSessions()
}

// batchGateway is the example server with /mcp/batch, the gateway in
// front of batchUpstream, allowing weather/get_forecast to agents with
// mcp:call; global adds mastio options.
func batchGateway(t *testing.T, global string) *server {
	t.Helper()
	up := batchUpstream(t)
	return exampleServer(t, global+`
		policy {
			allow capability:mcp:call tools/call weather/get_forecast
		}`, `
	handle /mcp/batch {
		mastio_mcp weather
		reverse_proxy {$MCP_BATCH_UPSTREAM}
	}
`, "MCP_BATCH_UPSTREAM="+up.URL)
}

// With audit_sync os an answered call's mcp.forward row is in the
// operating system's hands before the answer: killing Caddy (SIGKILL, no
// shutdown) right after the answers loses none of them. An outcome (mcp.call)
// row the kill took is a call verify lists as "outcome unknown".
func TestAuditSyncOSRowsSurviveKill(t *testing.T) {
	s := batchGateway(t, "\t\taudit_sync os\n\t\taudit_commit_delay 1ms\n")
	if !strings.Contains(s.out.String(), "audit_sync is os") {
		t.Fatalf("no warning about audit_sync os in the log:\n%s", s.out)
	}
	// A configuration written for an earlier release still loads, told
	// that the option it sets is gone.
	if !strings.Contains(s.out.String(), "audit_commit_delay is deprecated and has no effect") {
		t.Fatalf("no warning about the deprecated audit_commit_delay in the log:\n%s", s.out)
	}
	caller := makeIdentity(t, s, "crashy", "mcp:call")
	const workers, perWorker = 8, 5
	callGateway(t, s, caller, workers, perWorker, func(int) bool { return false })
	s.kill()
	db := openDB(t, s.dataDir)
	var forwards, outcomes int
	if err := db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.forward' AND actor LIKE '%crashy'`).Scan(&forwards); err != nil {
		t.Fatal(err)
	}
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call' AND actor LIKE '%crashy'`).Scan(&outcomes)
	if forwards != workers*perWorker {
		t.Fatalf("%d calls answered before the kill, %d mcp.forward rows after it", workers*perWorker, forwards)
	}
	verifyChain(t, db)
	out, code := s.operator("audit", "verify", "--db", filepath.Join(s.dataDir, "mastio.db"))
	lost := forwards - outcomes
	t.Logf("%d outcome rows lost to the kill", lost)
	if code != 0 || (lost > 0) != strings.Contains(out, fmt.Sprintf("outcome unknown: %d forwarded MCP calls", lost)) {
		t.Fatalf("verify, with %d outcomes lost: exit %d\n%s", lost, code, out)
	}
}

// lastConfigLoadSync is the audit_sync the newest config.load row records.
func lastConfigLoadSync(t *testing.T, db *sql.DB) string {
	t.Helper()
	var details string
	if err := db.QueryRow(`SELECT details FROM audit_events WHERE event_type = 'config.load' ORDER BY seq DESC LIMIT 1`).Scan(&details); err != nil {
		t.Fatal(err)
	}
	var d struct {
		AuditSync string `json:"audit_sync"`
	}
	decodeJSON(t, details, &d)
	return d.AuditSync
}

// audit_sync is a setting of the audit writer, which outlives configs: a
// reload that fails must leave it as it was, and one that succeeds
// applies it, warns and records it in config.load.
func TestAuditSyncChangesOnlyWithAConfigThatRuns(t *testing.T) {
	s := exampleServer(t, "", "")
	db := openDB(t, s.dataDir)
	if got := lastConfigLoadSync(t, db); got != "full" {
		t.Fatalf("config.load records audit_sync %q, want full", got)
	}
	path := filepath.Join(s.dir, "Caddyfile")
	base, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	reload := func(extra string) (string, error) {
		writeFile(t, path, strings.Replace(string(base), "org_id orga", "org_id orga\n\t\t"+extra, 1))
		return s.runCaddy("reload", "--config", path, "--adapter", "caddyfile", "--address", s.adminAddr)
	}
	// Refused during provisioning, after the mastio app read audit_sync.
	if out, err := reload("audit_sync os\n\t\tadmin_secret {env.MASTIO_UNSET_SECRET}"); err == nil {
		t.Fatalf("a reload with an unresolvable admin secret was accepted:\n%s", out)
	}
	if strings.Contains(s.out.String(), "audit_sync is os") || lastConfigLoadSync(t, db) != "full" {
		t.Fatalf("a failed reload changed audit_sync:\n%s", s.out)
	}
	if out, err := reload("audit_sync os"); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	if !strings.Contains(s.out.String(), "audit_sync is os") {
		t.Fatalf("no warning about audit_sync os:\n%s", s.out)
	}
	if got := lastConfigLoadSync(t, db); got != "os" {
		t.Fatalf("config.load records audit_sync %q, want os", got)
	}
}
