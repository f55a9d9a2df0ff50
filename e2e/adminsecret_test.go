package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

func TestAdminSecretIsEnforced(t *testing.T) {
	s := identityServer(t)
	cases := []struct {
		secret string
		status int
		code   string
	}{
		{"", 401, "admin_secret_required"},
		{"   ", 401, "admin_secret_required"},
		{"wrong-secret-0000000000", 403, "admin_secret_invalid"},
		{adminSecret + "x", 403, "admin_secret_invalid"},
	}
	for _, c := range cases {
		code, body := s.adminCall(t, "GET", "/proxy/admin/agents", c.secret, nil)
		if code != c.status || body["error"] != c.code {
			t.Fatalf("secret %q: %d %v", c.secret, code, body["_raw"])
		}
	}
	if code, body := s.adminCall(t, "GET", "/proxy/admin/agents", adminSecret, nil); code != 200 || body["count"] != float64(0) {
		t.Fatalf("right secret: %d %v", code, body["_raw"])
	}
	// Repeated failures lock the address out, even for the right secret.
	var last int
	var hdr string
	for i := 0; i < 12; i++ {
		req, _ := http.NewRequest("GET", s.url("/v1/admin/agents"), nil)
		req.Header.Set("X-Admin-Secret", "guess-"+fmt.Sprint(i)+"-aaaaaaaaaaaaaa")
		resp, err := s.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		last, hdr = resp.StatusCode, resp.Header.Get("Retry-After")
	}
	if last != 429 || hdr == "" {
		t.Fatalf("after repeated failures: %d Retry-After=%q", last, hdr)
	}
	if code, _ := s.adminCall(t, "GET", "/v1/admin/agents", adminSecret, nil); code != 429 {
		t.Fatalf("right secret while locked out: %d", code)
	}
	s.stop()
	counts := eventCounts(t, openDB(t, s.dataDir))
	if counts["admin.auth_failed"] < 10 {
		t.Fatalf("failed attempts audited: %d", counts["admin.auth_failed"])
	}
}

func TestAdminRequestValidationChangesNothing(t *testing.T) {
	s := identityServer(t)
	cases := []struct {
		method, path string
		body         string
		status       int
		code, field  string
	}{
		{"POST", "/v1/admin/agents", `{"agent_name":"a",`, 400, "invalid_request", ""},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","colour":"red"}`, 400, "invalid_request", "colour"},
		{"POST", "/v1/admin/agents", `{"agent_name":42}`, 400, "invalid_request", "agent_name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","capabilities":"mcp:call"}`, 400, "invalid_request", "capabilities"},
		{"POST", "/v1/admin/agents", `{"agent_name":"bad name"}`, 400, "invalid_request", "agent_name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","public_key_pem":"nope"}`, 400, "invalid_request", "public_key_pem"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","dpop_jwk":{"kty":"oct","k":"AA"}}`, 400, "invalid_request", "dpop_jwk"},
		{"POST", "/v1/admin/agents", `{}`, 400, "invalid_request", "agent_name"},
		// Read strictly: a member twice, or in another letter case, is
		// refused and named, never read one way or the other.
		{"POST", "/v1/admin/agents", `{"agent_name":"a","agent_name":"b"}`, 400, "invalid_request", "agent_name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","Agent_Name":"b"}`, 400, "invalid_request", "Agent_Name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","capabilities":["x"],"capabilities":["admin"]}`, 400, "invalid_request", "capabilities"},
		{"POST", "/v1/admin/enrollments/nosuchsession/approve", `{"agent_id":"x","agent_id":"y"}`, 400, "invalid_request", "agent_id"},
		{"PUT", "/v1/admin/policies", `{"rules":"","rules":"allow * * */*"}`, 400, "invalid_request", "rules"},
		{"POST", "/v1/admin/agents", `{"agent_name":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "request_too_large", ""},
		{"POST", "/registry/agents/orga::ghost/revoke", ``, 404, "agent_not_found", ""},
		{"POST", "/registry/agents/other::ghost/rotate-cert", ``, 404, "agent_not_found", ""},
		{"GET", "/v1/admin/agents/orga::ghost", ``, 404, "agent_not_found", ""},
		{"POST", "/v1/admin/enrollments/nosuchsession/approve", `{"agent_id":"x"}`, 404, "enrollment_not_found", ""},
		{"PUT", "/v1/admin/agents", `{}`, 405, "method_not_allowed", ""},
		{"GET", "/v1/admin/nothing", ``, 404, "not_found", ""},
	}
	for _, c := range cases {
		code, body := s.adminCall(t, c.method, c.path, adminSecret, c.body)
		field, _ := body["field"].(string)
		if code != c.status || body["error"] != c.code || field != c.field {
			t.Errorf("%s %s %.40s: got %d %v", c.method, c.path, c.body, code, body["_raw"])
		}
	}
	s.stop()
	db := openDB(t, s.dataDir)
	var agents int
	db.QueryRow(`SELECT COUNT(*) FROM agents`).Scan(&agents)
	counts := eventCounts(t, db)
	if agents != 0 || counts["agent.created"] != 0 {
		t.Fatalf("invalid requests wrote something: %d agents, %v", agents, counts)
	}
}

// TestAdminLockoutRecovery is runbook section 7: an address locked out by
// failed secrets is refused even with the right one; putting a new secret
// in proxy.env and restarting lets the administrator in with it, the old
// one is refused, and the stored hash was re-bootstrapped.
func TestAdminLockoutRecovery(t *testing.T) {
	s := identityServer(t)
	for i := 0; i < 12; i++ {
		s.adminCall(t, "GET", "/v1/admin/agents", fmt.Sprintf("guess-%d-aaaaaaaaaaaaaa", i), nil)
	}
	if code, _ := s.adminCall(t, "GET", "/proxy/admin/agents", adminSecret, nil); code != 429 {
		t.Fatalf("locked out, right secret: %d", code)
	}
	s.stop()
	const newSecret = "rotated-admin-secret-8d41f0c2e7b9a3"
	writeFile(t, filepath.Join(s.dir, "proxy.env"), "MCP_PROXY_ADMIN_SECRET="+newSecret+"\n")
	s.start()
	if code, body := s.adminCall(t, "GET", "/proxy/admin/agents", newSecret, nil); code != 200 {
		t.Fatalf("new secret after the restart: %d %v", code, body["_raw"])
	}
	if code, body := s.adminCall(t, "GET", "/proxy/admin/agents", adminSecret, nil); code != 403 {
		t.Fatalf("old secret after rotation: %d %v", code, body["_raw"])
	}
}
