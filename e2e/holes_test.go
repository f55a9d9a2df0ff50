package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// TestReplayRefusedAfterRestart: a client assertion and a DPoP proof that
// were used once are refused after the gateway restarts, whether it was
// stopped (SIGTERM) or killed (SIGKILL): an assertion captured from an
// agent mints no token for a caller holding neither its key nor its
// certificate, and a captured proof is not accepted again.
func TestReplayRefusedAfterRestart(t *testing.T) {
	s, _ := tokenServer(t)
	id := makeIdentity(t, s, "agent", "api:read")
	sess := id.Session()
	ctx := context.Background()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			// The agent's own use of an assertion and of a proof.
			assertion, _ := sess.Assertion("")
			attacker := newAttacker(t, s, id)
			tokenProof := func() string {
				return attacker.proof(attacker.dkey, "", func(h, c map[string]any) {
					c["htm"], c["htu"] = "POST", s.url("/v1/auth/token")
					delete(c, "ath")
				})
			}
			mint := func() map[string]any {
				resp := s.do(t, "POST", "/v1/auth/token", map[string][]string{"Content-Type": {"application/json"}, "DPoP": {tokenProof()}},
					nil, []byte(`{"client_assertion":"`+assertion+`"}`))
				b := readBody(t, resp)
				b["_status"] = resp.StatusCode
				return b
			}
			if b := mint(); b["_status"] != 200 {
				t.Fatalf("first use of the assertion: %v", b["_raw"])
			}
			resp, err := sess.HTTPClient().Get(s.url("/api/x"))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("a guarded request: %v %v", resp, err)
			}
			resp.Body.Close()
			tok, err := sess.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			proof, _ := sess.Proof("GET", s.url("/api/x"), tok)
			guarded := func() (int, string) {
				resp := s.do(t, "GET", "/api/x", map[string][]string{"Authorization": {"DPoP " + tok}, "DPoP": {proof}}, &id.Certificate, nil)
				b := readBody(t, resp)
				return resp.StatusCode, b["_raw"].(string)
			}
			if code, body := guarded(); code != 200 {
				t.Fatalf("first use of the proof: %d %s", code, body)
			}
			if code, _ := guarded(); code != 401 {
				t.Fatalf("a replayed proof before the restart: %d", code)
			}

			s.cmd.Process.Signal(sig)
			s.waitExit()
			s.start()

			if b := mint(); b["_status"] != 401 || b["error"] != "invalid_client" || !strings.Contains(b["_raw"].(string), "already used") {
				t.Fatalf("the assertion replayed after a restart: %v", b["_raw"])
			}
			if code, body := guarded(); code != 401 || !strings.Contains(body, "dpop") {
				t.Fatalf("the proof replayed after a restart: %d %s", code, body)
			}
			// The agent itself carries on: its session picks up the new
			// nonce and signs fresh proofs.
			resp, err = sess.HTTPClient().Get(s.url("/api/x"))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("the agent after the restart: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

// TestIdentityHeadersComeFromTheMastio: whatever identity headers a caller
// sends are removed, in certificate and token mode alike; the upstream
// gets X-Agent-Id and X-Agent-Spiffe-Id as the Mastio verified them.
func TestIdentityHeadersComeFromTheMastio(t *testing.T) {
	s, _ := tokenServer(t)
	id := makeIdentity(t, s, "agent", "api:read")
	forged := map[string][]string{"X-Agent-Id": {"orga::admin", "orga::root"}, "X-Agent-Spiffe-Id": {"spiffe://mastio.local/orga/admin"},
		"X-Mastio-Scope": {"admin:write"}, "X-Cullis-Agent": {"orga::admin"}}
	check := func(what string, b map[string]any) {
		t.Helper()
		if b["x_agent_id"] != "orga::agent" || b["x_agent_spiffe_id"] != "spiffe://mastio.local/orga/agent" ||
			b["x_mastio_scope"] != "" || b["x_cullis_agent"] != "" {
			t.Fatalf("%s: the upstream got %v", what, b["_raw"])
		}
	}
	resp := s.do(t, "GET", "/mtls/x", forged, &id.Certificate, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("mtls: %d", resp.StatusCode)
	}
	check("mastio_auth mtls", readBody(t, resp))

	req, _ := http.NewRequest("GET", s.url("/api/x"), nil)
	for k, v := range forged {
		req.Header[k] = v
	}
	resp, err := id.Session().HTTPClient().Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("token: %v %v", resp, err)
	}
	check("mastio_auth (token)", readBody(t, resp))
}

// TestRejectedRegistrationWritesNoCredential: an MCP server registration
// the admin API refuses leaves no credential behind; a replaced or removed
// server's credential is removed with it.
func TestRejectedRegistrationWritesNoCredential(t *testing.T) {
	s := identityServer(t)
	tokens := func() []string {
		files, _ := filepath.Glob(filepath.Join(s.dataDir, "keys", "mcp-server-*"))
		return files
	}
	for _, body := range []string{
		`{"name":"weather","url":"ftp://weather.internal/mcp","bearer_token":"s3cret-token-1"}`,
		`{"name":"bad name","url":"https://weather.internal/mcp","bearer_token":"s3cret-token-2"}`,
		`{"name":"weather","url":"https://weather.internal/mcp","bearer_token":"s3cret-token-3","timeout_seconds":-1}`,
	} {
		if code, b := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, body); code != 400 {
			t.Fatalf("%s: %d %v", body, code, b["_raw"])
		}
		if files := tokens(); len(files) != 0 {
			t.Fatalf("a refused registration wrote %v", files)
		}
	}
	register := func(token string) {
		t.Helper()
		if code, b := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret,
			`{"name":"weather","url":"https://weather.internal/mcp","bearer_token":"`+token+`"}`); code != 201 {
			t.Fatalf("register: %d %v", code, b["_raw"])
		}
	}
	register("first-token-value")
	first := tokens()
	register("second-token-value")
	second := tokens()
	if len(first) != 1 || len(second) != 1 || first[0] == second[0] {
		t.Fatalf("credentials after a replacement: %v then %v", first, second)
	}
	if data, _ := os.ReadFile(second[0]); string(data) != "second-token-value" || fileMode(t, second[0]) != 0o600 {
		t.Fatalf("the stored credential: %q mode %v", data, fileMode(t, second[0]))
	}
	if code, b := s.adminCall(t, "DELETE", "/v1/admin/mcp-servers/weather", adminSecret, nil); code != 200 {
		t.Fatalf("delete: %d %v", code, b["_raw"])
	}
	if files := tokens(); len(files) != 0 {
		t.Fatalf("a removed server left %v", files)
	}
}

// TestRefusalsNamingAnAgentAreAudited: a refusal whose credentials name an
// agent — another agent's MCP session, a revoked agent's token on an open
// connection — is audited; anonymous refusals are counted, not audited.
func TestRefusalsNamingAnAgentAreAudited(t *testing.T) {
	s := mcpServer(t)
	owner := makeIdentity(t, s, "owner", "mcp:call")
	other := makeIdentity(t, s, "other", "mcp:call")
	cs := connectMCP(t, s, owner, "/mcp/json")
	list := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	if code, _, body := rawMCP(t, s, other.Session(), "/mcp/json", map[string]string{"Mcp-Session-Id": cs.ID()}, list); code != 403 {
		t.Fatalf("another agent's session: %d %s", code, body)
	}
	// The revoked agent's connections are still open: its next requests
	// are refused with its identity known.
	tr := &http.Transport{TLSClientConfig: owner.TLSConfig(), ForceAttemptHTTP2: true}
	sess, err := owner.NewSession(s.url(""), tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/mcp/json", "/mcp/batch"} { // behind mastio_auth, and authenticated by mastio_mcp
		if code, _, _ := rawMCP(t, s, sess, path, nil, list); code != 200 {
			t.Fatalf("%s before the revocation: %d", path, code)
		}
	}
	if code, b := s.adminCall(t, "POST", "/v1/admin/agents/orga::owner/revoke", adminSecret, nil); code != 200 {
		t.Fatalf("revoke: %d %v", code, b["_raw"])
	}
	tok, err := sess.Token(context.Background()) // minted before the revocation
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/mcp/json", "/mcp/batch"} {
		proof, _ := sess.Proof("POST", s.url(path), tok)
		req, _ := http.NewRequest("POST", s.url(path), strings.NewReader(list))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "DPoP "+tok)
		req.Header.Set("DPoP", proof)
		resp, err := tr.RoundTrip(req) // on the connection opened before the revocation
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(string(body), "revoked") {
			t.Fatalf("%s after the revocation: %d %s", path, resp.StatusCode, body)
		}
	}
	// A new handshake with the revoked certificate is refused, and audited.
	expectHandshakeRefused(t, s, owner.Certificate, "the revoked certificate")
	// Anonymous refusals: counted, not audited.
	before := s.metric(t, "caddy_mastio_auth_total", `result="deny"`, `reason="missing_token"`)
	for i := 0; i < 20; i++ {
		resp, err := s.client().Post(s.url("/mcp/json"), "application/json", strings.NewReader(list))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("anonymous: %d", resp.StatusCode)
		}
	}
	if after := s.metric(t, "caddy_mastio_auth_total", `result="deny"`, `reason="missing_token"`); after-before != 20 {
		t.Fatalf("anonymous refusals counted: %v -> %v", before, after)
	}
	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	rows := func(q string, args ...any) int {
		var n int
		db.QueryRow(q, args...).Scan(&n)
		return n
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.refused' AND actor = 'agent:orga::other'
		AND json_extract(details, '$.reason') = 'session_of_another_agent'`); n != 1 {
		t.Errorf("session refusals audited: %d", n)
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'auth.refused' AND actor = 'agent:orga::owner'
		AND json_extract(details, '$.reason') = 'agent_revoked' AND json_extract(details, '$.method') = 'POST'
		AND seq > (SELECT seq FROM audit_events WHERE event_type = 'agent.revoked')`); n != 2 {
		t.Errorf("revoked-agent refusals audited: %d", n)
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'auth.refused' AND actor = 'agent:orga::owner'
		AND json_extract(details, '$.stage') = 'tls_handshake'`); n < 1 {
		t.Errorf("refused handshakes audited: %d", n)
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type IN ('auth.refused', 'mcp.refused') AND actor NOT LIKE 'agent:%'`); n != 0 {
		t.Errorf("anonymous refusals audited: %d", n)
	}
	verifyChain(t, db)
}

// TestAdminSecretFailuresLimitedGlobally: failed admin secrets are limited
// per address and in total, so 50 addresses guessing 10 times each cannot
// write 500 audit rows; the operator's right secret still works.
func TestAdminSecretFailuresLimitedGlobally(t *testing.T) {
	s := exampleServerWith(t, func(cf string) string {
		return strings.Replace(cf, "\t\tprotocols h1 h2\n", "\t\tprotocols h1 h2\n\t\ttrusted_proxies static 127.0.0.1/32\n", 1)
	}, "", "")
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for a := 0; a < 50; a++ {
		wg.Add(1)
		go func(a int) {
			defer wg.Done()
			c := s.client()
			for i := 0; i < 10; i++ {
				req, _ := http.NewRequest("GET", s.url("/v1/admin/agents"), nil)
				req.Header.Set("X-Admin-Secret", fmt.Sprintf("guess-%d-%d-aaaaaaaaaaaaaa", a, i))
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", a+1))
				resp, err := c.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}(a)
	}
	wg.Wait()
	if statuses[429] == 0 || statuses[403]+statuses[429] != 500 {
		t.Fatalf("answers to 500 wrong secrets: %v", statuses)
	}
	req, _ := http.NewRequest("GET", s.url("/v1/admin/agents"), nil)
	req.Header.Set("X-Admin-Secret", adminSecret)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	resp, err := s.client().Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the right secret during the attack: %v %v", resp, err)
	}
	resp.Body.Close()
	if s.metric(t, "caddy_mastio_rate_limited_total", `route="admin_auth"`, `scope="global"`) == 0 {
		t.Fatal("global refusals not counted")
	}
	s.stop()
	n := eventCounts(t, openDB(t, s.dataDir))["admin.auth_failed"]
	if n > 100 || n < 10 {
		t.Fatalf("%d failures audited for 500 attempts (want the global limit, 60 a minute)", n)
	}
}

// TestSecretsNeverReachALog switches on an access log (and debug logging)
// and sends what carries secrets — admin calls, token requests, guarded
// requests, enrollment status polls, a request whose upstream is down —
// then reads every log line: the admin secret, the DPoP proofs and the
// tokens sent never appear, and the entries show the headers REDACTED.
func TestSecretsNeverReachALog(t *testing.T) {
	up := echoUpstream(t)
	accessLog := filepath.Join(workDir(t), "access.log")
	s := exampleServerWith(t, func(cf string) string {
		cf = strings.Replace(cf, "{\n\tadmin ", "{\n\tdebug\n\tadmin ", 1)
		return strings.Replace(cf, "localhost:{$MASTIO_HTTPS_PORT:9443} {\n", "localhost:{$MASTIO_HTTPS_PORT:9443} {\n\tlog {\n\t\toutput file "+
			accessLog+"\n\t\tformat json\n\t}\n", 1)
	}, "", guardedRoutes+`
	handle /down/* {
		mastio_auth
		reverse_proxy 127.0.0.1:1
	}`, "MASTIO_UPSTREAM="+up.URL)
	var secrets []string
	for _, path := range []string{"/v1/admin/agents", "/v1/admin/nothing-here", "/proxy/admin/agents"} {
		s.adminCall(t, "GET", path, adminSecret, nil)
	}
	secrets = append(secrets, adminSecret)
	id := makeIdentity(t, s, "agent", "api:read")
	sess := id.Session()
	for _, path := range []string{"/api/x", "/down/x"} {
		resp, err := sess.HTTPClient().Get(s.url(path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	tok, _ := sess.Token(context.Background())
	proof, _ := sess.Proof("GET", s.url("/api/x"), tok)
	s.do(t, "GET", "/api/x", map[string][]string{"Authorization": {"DPoP " + tok}, "DPoP": {proof}}, &id.Certificate, nil).Body.Close()
	secrets = append(secrets, tok, proof)
	// An enrollment polled with its proof of possession.
	p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), "id"),
		RootCAs: s.rootPool(), Requester: client.Requester{Name: "N", Email: "n@orga.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.stop()

	data, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	all := string(data) + s.out.String()
	for _, secret := range secrets {
		if strings.Contains(all, secret) {
			t.Errorf("a log holds a secret: %.20s...", secret)
		}
	}
	seen := map[string]int{}
	for _, line := range strings.Split(string(data), "\n") {
		var entry struct {
			Msg     string `json:"msg"`
			Status  int    `json:"status"`
			Request struct {
				URI     string              `json:"uri"`
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg != "handled request" {
			continue
		}
		for _, h := range []string{"X-Admin-Secret", "Dpop", "X-Enrollment-Proof", "Authorization"} {
			if v, ok := entry.Request.Headers[h]; ok {
				seen[h]++
				if len(v) != 1 || v[0] != "REDACTED" {
					t.Errorf("%s logged for %s: %v", h, entry.Request.URI, v)
				}
			}
		}
		seen[entry.Request.URI]++
	}
	for _, want := range []string{"X-Admin-Secret", "Dpop", "X-Enrollment-Proof", "/v1/admin/nothing-here", "/down/x", "/v1/auth/token"} {
		if seen[want] == 0 {
			t.Errorf("no access log entry with %s: %v", want, seen)
		}
	}
}
