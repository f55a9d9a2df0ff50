package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// TestCaddyAdminEndpointRevokesAtOnceAcrossReloads: the operator revokes
// an agent through Caddy's admin endpoint (localhost:2019/mastio/...), no
// admin secret; the agent's next request on the site is refused, the
// revocation is audited as caddy-admin, and the endpoint keeps working
// across caddy reload (it finds the running app at request time) and
// answers 503 once no mastio app runs.
func TestCaddyAdminEndpointRevokesAtOnceAcrossReloads(t *testing.T) {
	s := exampleServer(t, "", "")
	id := makeIdentity(t, s, "field-agent", "api:read")
	who := func() int {
		t.Helper()
		tok, err := id.Session().Token(t.Context())
		if err != nil {
			return 401 // the token endpoint refuses a revoked agent
		}
		proof, _ := id.Session().Proof("GET", s.url("/whoami"), tok)
		code, _, _ := s.get(id.Session().HTTPClient(), "/whoami", "Authorization", "DPoP "+tok, "DPoP", proof)
		return code
	}
	if code := who(); code != 200 {
		t.Fatalf("the agent before: %d", code)
	}
	reload := func() {
		t.Helper()
		if out, err := s.runCaddy("reload", "--config", filepath.Join(s.dir, "Caddyfile"), "--adapter", "caddyfile", "--address", s.adminAddr, "--force"); err != nil {
			t.Fatalf("caddy reload: %v\n%s", err, out)
		}
	}
	reload()
	code, body := s.admin("GET", "/mastio/agents", nil)
	if code != 200 || !strings.Contains(body, `"orga::field-agent"`) {
		t.Fatalf("GET /mastio/agents after a reload: %d %s", code, body)
	}
	code, body = s.admin("POST", "/mastio/agents/orga::field-agent/revoke", strings.NewReader(`{"reason":"laptop stolen"}`))
	if code != 200 {
		t.Fatalf("revoke through the admin endpoint: %d %s", code, body)
	}
	if code := who(); code != 401 {
		t.Fatalf("the agent right after the revocation: %d, want 401", code)
	}
	reload()
	if code := who(); code != 401 {
		t.Fatalf("the agent after another reload: %d, want 401", code)
	}
	code, body = s.admin("GET", "/mastio/agents/orga::field-agent", nil)
	var agent map[string]any
	json.Unmarshal([]byte(body), &agent)
	if code != 200 || agent["status"] != "revoked" {
		t.Fatalf("the agent through the admin endpoint: %d %s", code, body)
	}
	var revoked exportedRow
	for _, r := range s.exportAudit(t) {
		if r.Type == "agent.revoked" {
			revoked = r
		}
	}
	if revoked.Seq == 0 {
		t.Fatal("no agent.revoked row")
	}
	db := openDB(t, s.dataDir)
	var actor string
	db.QueryRow(`SELECT actor FROM audit_events WHERE seq = ?`, revoked.Seq).Scan(&actor)
	if actor != "caddy-admin" {
		t.Fatalf("agent.revoked actor %q, want caddy-admin", actor)
	}
	// Bad input is refused as on the site; unknown operations are 404.
	if code, body := s.admin("POST", "/mastio/agents", strings.NewReader(`{"agent_name":""}`)); code != 400 || !strings.Contains(body, "agent_name") {
		t.Fatalf("a bad create: %d %s", code, body)
	}
	if code, body := s.admin("GET", "/mastio/nothing", nil); code != 404 {
		t.Fatalf("an unknown operation: %d %s", code, body)
	}
	if code, body := s.admin("GET", "/mastio/audit/verify", nil); code != 200 || !strings.Contains(body, `"ok":true`) {
		t.Fatalf("audit verify: %d %s", code, body)
	}
	// A configuration without the mastio app: 503, saying so.
	if code, body := s.admin("POST", "/load", strings.NewReader(`{"admin":{"listen":"`+s.adminAddr+`"}}`)); code != 200 {
		t.Fatalf("load a config without mastio: %d %s", code, body)
	}
	if code, body := s.admin("GET", "/mastio/agents", nil); code != 503 || !strings.Contains(body, "no mastio app") {
		t.Fatalf("without a mastio app: %d %s", code, body)
	}
}
