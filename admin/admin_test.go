package admin_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// env is the admin API, registered as a surface of the Mastio's endpoints
// the way a Caddy build links it, over the core on a temporary SQLite
// file, served over TLS.
type env struct {
	t   *testing.T
	m   *mastio.Mastio
	url string
	c   *http.Client
}

func newEnv(t *testing.T, s mastio.Settings) *env {
	t.Helper()
	m := mastiotest.New(t, s, nil)
	srv := mastiotest.Serve(t, m, endpoints.New(m, zap.NewNop(), nil))
	return &env{t: t, m: m, url: srv.URL, c: mastiotest.Client(m)}
}

// as sends a request with the given admin secret ("" for none).
func (e *env) as(secret, method, path, body string) (int, map[string]any, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if secret != "" {
		req.Header.Set(admin.SecretHeader, secret)
	}
	resp, err := e.c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(data, &v); err != nil {
		e.t.Fatalf("%s %s: not a JSON object: %s", method, path, data)
	}
	return resp.StatusCode, v, resp.Header
}

// do sends a request as the administrator.
func (e *env) do(method, path, body string) (int, map[string]any) {
	e.t.Helper()
	status, v, _ := e.as(mastiotest.AdminSecret, method, path, body)
	return status, v
}

func (e *env) want(status int, v map[string]any, wantStatus int, what string) {
	e.t.Helper()
	if status != wantStatus {
		e.t.Fatalf("%s: %d %v, want %d", what, status, v, wantStatus)
	}
}

func TestTheAdminSecretGuardsEveryRoute(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	status, v, _ := e.as("", "GET", "/v1/admin/agents", "")
	if status != 401 || v["error"] != "admin_secret_required" {
		t.Fatalf("no secret: %d %v", status, v)
	}
	status, v, _ = e.as("not-the-secret-at-all", "POST", "/registry/agents/x/revoke", "")
	if status != 403 || v["error"] != "admin_secret_invalid" {
		t.Fatalf("a wrong secret: %d %v", status, v)
	}
	failed := mastiotest.Events(t, e.m, "admin.auth_failed")
	if len(failed) != 2 || mastiotest.Details(t, failed[0])["reason"] != "missing" || failed[1].Subject != "/registry/agents/x/revoke" {
		t.Fatalf("failures audited: %+v", failed)
	}
	// Ten failures a minute from an address: then every attempt from it is
	// refused, the right secret too.
	for i := 0; i < 8; i++ {
		e.as("wrong-secret-wrong-secret", "GET", "/v1/admin/agents", "")
	}
	status, v, hdr := e.as(mastiotest.AdminSecret, "GET", "/v1/admin/agents", "")
	if status != 429 || v["error"] != "too_many_failed_attempts" || hdr.Get("Retry-After") == "" {
		t.Fatalf("after ten failures: %d %v", status, v)
	}
}

func TestUnknownRoutesAndMethods(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	status, v := e.do("GET", "/v1/admin/nothing", "")
	e.want(status, v, 404, "an unknown admin route")
	status, v, hdr := e.as(mastiotest.AdminSecret, "PATCH", "/v1/admin/agents", "")
	if status != 405 || hdr.Get("Allow") == "" || v["error"] != "method_not_allowed" {
		t.Fatalf("PATCH agents: %d %v %v", status, v, hdr)
	}
	// Strict bodies: unknown members, members twice, wrong types.
	for _, body := range []string{`{"agent_name":"a","nope":1}`, `{"agent_name":"a","agent_name":"b"}`, `{"agent_name":7}`, `[`} {
		status, v := e.do("POST", "/v1/admin/agents", body)
		e.want(status, v, 400, body)
	}
	if n := len(mastiotest.Events(t, e.m, "agent.created")); n != 0 {
		t.Fatalf("a refused request created %d agents", n)
	}
}

func TestAgentLifecycle(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	status, v := e.do("POST", "/v1/admin/agents", `{"agent_name":"bot","capabilities":["mcp:call"],"groups":["ops"]}`)
	e.want(status, v, 201, "create with a generated key")
	id := e.m.OrgID() + "::bot"
	if v["agent_id"] != id || !strings.Contains(v["private_key_pem"].(string), "PRIVATE KEY") || v["note"] == nil || v["cert_sha256"] == "" {
		t.Fatalf("created: %v", v)
	}
	status, v = e.do("POST", "/v1/admin/agents", `{"agent_name":"bot"}`)
	e.want(status, v, 409, "the same name again")

	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(k.Public())
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}))
	body, _ := json.Marshal(map[string]any{"agent_name": "own-key", "public_key_pem": pubPEM})
	status, v = e.do("POST", "/v1/admin/agents", string(body))
	if e.want(status, v, 201, "create with the agent's key"); v["private_key_pem"] != nil {
		t.Fatal("a key the agent holds was answered back")
	}
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	body, _ = json.Marshal(map[string]any{"agent_name": "both", "public_key_pem": pubPEM,
		"csr_pem": string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))})
	status, v = e.do("POST", "/v1/admin/agents", string(body))
	e.want(status, v, 400, "a key and a CSR")

	// Read back, by name, by id and URL-escaped id; list with a status.
	for _, ref := range []string{"bot", id, strings.ReplaceAll(id, ":", "%3A")} {
		status, v = e.do("GET", "/v1/admin/agents/"+ref, "")
		if e.want(status, v, 200, "get "+ref); v["agent_id"] != id {
			t.Fatalf("get %s: %v", ref, v)
		}
	}
	status, v = e.do("GET", "/v1/admin/agents/nobody", "")
	e.want(status, v, 404, "an unknown agent")
	status, v = e.do("GET", "/proxy/admin/agents?status=active", "")
	if e.want(status, v, 200, "list"); v["count"] != float64(2) {
		t.Fatalf("list: %v", v)
	}
	status, v = e.do("GET", "/v1/admin/agents?status=sleeping", "")
	e.want(status, v, 400, "an unknown status")

	// A DPoP key: a public one only.
	jwk, _, _ := jwt.PublicJWK(k.Public(), "", "", "")
	body, _ = json.Marshal(map[string]any{"dpop_jwk": jwk})
	status, v = e.do("POST", "/v1/admin/agents/bot/dpop-jwk", string(body))
	if e.want(status, v, 200, "dpop key"); v["dpop_jkt"] == "" {
		t.Fatalf("dpop key: %v", v)
	}
	status, v = e.do("POST", "/v1/admin/agents/bot/dpop-jwk", `{"dpop_jwk":{"kty":"oct","k":"c2VjcmV0"}}`)
	e.want(status, v, 400, "a symmetric key")

	// Rotate with grace, revoke (the runbook's path), revoke again, reactivate.
	status, v = e.do("POST", "/v1/admin/agents/bot/rotate-cert", `{"grace_seconds":999999999}`)
	e.want(status, v, 400, "grace beyond the maximum")
	status, v = e.do("POST", "/v1/admin/agents/bot/rotate-cert", `{"grace_seconds":60}`)
	e.want(status, v, 200, "rotate with grace")
	status, v = e.do("POST", "/registry/agents/"+id+"/revoke?reason=lost%20laptop", "")
	if e.want(status, v, 200, "revoke"); v["status"] != "revoked" || v["reason"] != "lost laptop" {
		t.Fatalf("revoke: %v", v)
	}
	status, v = e.do("DELETE", "/v1/admin/agents/bot", "")
	e.want(status, v, 409, "revoke twice")
	status, v = e.do("POST", "/registry/agents/bot/rotate-cert", `{"grace_seconds":60}`)
	e.want(status, v, 400, "grace for a revoked agent's old certificates")
	status, v = e.do("POST", "/registry/agents/bot/rotate-cert", "")
	if e.want(status, v, 200, "reactivate"); v["agent"].(map[string]any)["status"] != "active" {
		t.Fatalf("reactivate: %v", v)
	}
	for typ, n := range map[string]int{"agent.created": 2, "agent.cert_rotated": 2, "agent.revoked": 1, "agent.dpop_jwk_set": 1} {
		if got := mastiotest.Events(t, e.m, typ); len(got) != n || mastiotest.Details(t, got[0])["remote_ip"] != "127.0.0.1" {
			t.Errorf("%s: %d rows, want %d, with the caller's address", typ, len(got), n)
		}
	}
}

func TestSigningKeyRotation(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	status, v := e.do("POST", "/v1/admin/keys/rotate", `{"grace_seconds":-1}`)
	e.want(status, v, 400, "a negative grace")
	status, v = e.do("POST", "/v1/admin/keys/rotate", "")
	if e.want(status, v, 200, "rotate"); v["new_kid"] == "" || v["old_kid"] == "" || v["new_kid"] == v["old_kid"] {
		t.Fatalf("rotation: %v", v)
	}
	jwks, _ := e.m.JWKS()
	if !strings.Contains(string(jwks), v["new_kid"].(string)) || !strings.Contains(string(jwks), v["old_kid"].(string)) {
		t.Fatalf("the JWKS lacks a key: %s", jwks)
	}
}

func TestPoliciesAndBindings(t *testing.T) {
	e := newEnv(t, mastio.Settings{Policy: "deny * tools/call files/delete\n"})
	mastiotest.NewAgent(t, e.m, "reader", "mcp:call")
	status, v := e.do("PUT", "/v1/admin/policies", "allow agent:*::reader tools/call files/*\nallow agent:x tools/call\n")
	if e.want(status, v, 400, "an invalid rule"); v["error"] != "invalid_policy" || v["line"] != float64(2) {
		t.Fatalf("invalid policy: %v", v)
	}
	status, v = e.do("PUT", "/v1/admin/policies", `{"rules":"allow agent:*::reader tools/call files/*\n"}`)
	if e.want(status, v, 200, "set the rules"); v["count"] != float64(1) {
		t.Fatalf("set: %v", v)
	}
	status, v = e.do("GET", "/v1/admin/policies", "")
	if e.want(status, v, 200, "get"); !strings.Contains(v["config"].(string), "deny") || len(v["rules"].([]any)) != 2 {
		t.Fatalf("policies: %v", v)
	}
	check := func(name string) (bool, string) {
		t.Helper()
		status, v := e.do("POST", "/v1/admin/policies/check", `{"agent_id":"reader","server":"files","name":"`+name+`"}`)
		e.want(status, v, 200, "check "+name)
		return v["allowed"].(bool), v["reason"].(string)
	}
	if ok, _ := check("read"); !ok {
		t.Fatal("the stored rule does not allow files/read")
	}
	if ok, why := check("delete"); ok || !strings.Contains(why, "config:1") {
		t.Fatalf("the config's deny does not win: %v %s", ok, why)
	}
	status, v = e.do("POST", "/v1/admin/policies/check", `{"agent_id":"nobody","server":"files","name":"read"}`)
	e.want(status, v, 404, "check for an unknown agent")
	status, v = e.do("POST", "/v1/admin/policies/check", `{"agent_id":"reader"}`)
	e.want(status, v, 400, "check without server and name")

	status, v = e.do("POST", "/v1/admin/bindings", `{"agent_id":"reader","server":"weather"}`)
	e.want(status, v, 200, "bind")
	if ok, _ := e.m.CheckPolicy(e.m.OrgID()+"::reader", "tools/call", "weather/forecast"); !ok.Allowed {
		t.Fatal("the binding does not allow the server")
	}
	status, v = e.do("DELETE", "/v1/admin/bindings", `{"agent_id":"reader","server":"weather"}`)
	e.want(status, v, 200, "unbind")
	status, v = e.do("POST", "/v1/admin/bindings", `{"agent_id":"reader","server":"a/b"}`)
	e.want(status, v, 400, "a server name with a slash")
	if n := len(mastiotest.Events(t, e.m, "policy.updated")); n != 3 {
		t.Fatalf("%d policy.updated rows, want 3", n)
	}
}

func TestMCPServerRegistry(t *testing.T) {
	e := newEnv(t, mastio.Settings{Servers: map[string]*mastio.Server{"configured": {URL: "https://cfg.example/mcp"}}})
	status, v := e.do("POST", "/v1/admin/mcp-servers", `{"name":"weather","url":"https://w.example/mcp","bearer_token":"tok-123-secret","timeout_seconds":5}`)
	if e.want(status, v, 201, "register"); v["bearer_secret"] == "" || v["source"] != "store" || v["timeout_seconds"] != float64(5) {
		t.Fatalf("registered: %v", v)
	}
	key := filepath.Join(e.m.DataDir(), "keys", v["bearer_secret"].(string))
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the token is not in the key store (0600): %v %v", fi, err)
	}
	status, v = e.do("GET", "/v1/admin/mcp-servers", "")
	if e.want(status, v, 200, "list"); v["count"] != float64(2) {
		t.Fatalf("list: %v", v)
	}
	raw, _ := json.Marshal(v)
	if strings.Contains(string(raw), "tok-123-secret") {
		t.Fatal("the list shows a secret")
	}
	for _, body := range []string{
		`{"name":"configured","url":"https://x.example/mcp"}`, // defined in the config
		`{"name":"bad name","url":"https://x.example/mcp"}`,
		`{"name":"ftp","url":"ftp://x.example"}`,
	} {
		status, v = e.do("POST", "/v1/admin/mcp-servers", body)
		e.want(status, v, 400, body)
	}
	status, v = e.do("DELETE", "/v1/admin/mcp-servers/weather", "")
	e.want(status, v, 200, "remove")
	if _, err := os.Stat(key); !os.IsNotExist(err) {
		t.Fatalf("the removed server's token stays in the key store: %v", err)
	}
	status, v = e.do("DELETE", "/v1/admin/mcp-servers/weather", "")
	e.want(status, v, 404, "remove twice")
}

// An OAuth client secret given to the admin API goes to the key store
// (0600), is never shown, is replaced with the server and removed with it.
func TestMCPServerOAuthSecretIsKeptInTheKeyStore(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	register := func(secret string) string {
		t.Helper()
		status, v := e.do("POST", "/v1/admin/mcp-servers", `{"name":"search","url":"https://s.example/mcp","client_certificate":true,`+
			`"oauth":{"token_url":"https://auth.example/token","client_id":"mastio","client_secret":"`+secret+`","scopes":["tools"]}}`)
		e.want(status, v, 201, "register")
		raw, _ := json.Marshal(v)
		oauth, _ := v["oauth"].(map[string]any)
		if strings.Contains(string(raw), secret) || oauth == nil || oauth["client_secret_name"] == nil || v["client_certificate"] != true {
			t.Fatalf("registered: %s", raw)
		}
		key := filepath.Join(e.m.DataDir(), "keys", oauth["client_secret_name"].(string))
		if data, err := os.ReadFile(key); err != nil || string(data) != secret {
			t.Fatalf("the client secret is not in the key store: %v", err)
		}
		if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
			t.Fatalf("key store file mode %v", fi.Mode())
		}
		return key
	}
	first := register("first-oauth-secret")
	second := register("second-oauth-secret")
	if _, err := os.Stat(first); !os.IsNotExist(err) {
		t.Fatalf("the replaced secret stays in the key store: %v", err)
	}
	for _, ev := range mastiotest.Events(t, e.m, "mcp_server.registered") {
		if strings.Contains(string(ev.Details), "oauth-secret\"") {
			t.Fatalf("a client secret reached the audit log: %s", ev.Details)
		}
	}
	status, v := e.do("DELETE", "/v1/admin/mcp-servers/search", "")
	e.want(status, v, 200, "remove")
	if _, err := os.Stat(second); !os.IsNotExist(err) {
		t.Fatalf("the removed server's secret stays in the key store: %v", err)
	}
}

func TestEnrollmentDecisions(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	sessions := make([]string, 2)
	for i := range sessions {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		spki, _ := x509.MarshalPKIXPublicKey(k.Public())
		pop, _ := signPoP(k, spki)
		en, err := e.m.StartEnrollment(context.Background(), enrollmentRequest(spki, pop))
		if err != nil {
			t.Fatal(err)
		}
		sessions[i] = en.SessionID
	}
	status, v := e.do("GET", "/v1/admin/enrollments?status=pending", "")
	if e.want(status, v, 200, "list pending"); v["count"] != float64(2) {
		t.Fatalf("pending: %v", v)
	}
	status, v = e.do("POST", "/v1/admin/enrollments/"+sessions[0]+"/approve", `{"capabilities":["mcp:call"]}`)
	e.want(status, v, 400, "approve without a name")
	status, v = e.do("POST", "/v1/admin/enrollments/"+sessions[0]+"/approve", `{"agent_id":"enrolled","capabilities":["mcp:call"]}`)
	if e.want(status, v, 200, "approve"); v["status"] != "approved" || v["agent_id"] != e.m.OrgID()+"::enrolled" {
		t.Fatalf("approve: %v", v)
	}
	status, v = e.do("POST", "/v1/admin/enrollments/"+sessions[0]+"/reject", "")
	e.want(status, v, 409, "reject a decided session")
	status, v = e.do("POST", "/v1/admin/enrollments/"+sessions[1]+"/reject", `{"reason":"unknown requester"}`)
	if e.want(status, v, 200, "reject"); v["rejection_reason"] != "unknown requester" {
		t.Fatalf("reject: %v", v)
	}
	status, v = e.do("POST", "/v1/admin/enrollments/nope/approve", `{"agent_id":"x"}`)
	e.want(status, v, 404, "an unknown session")
}

func signPoP(k *ecdsa.PrivateKey, spki []byte) (string, error) {
	return client.SignMessage(k, registry.PoPMessage(spki))
}

func enrollmentRequest(spki []byte, pop string) registry.EnrollmentRequest {
	return registry.EnrollmentRequest{PublicKeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})),
		RequesterName: "Ada", RequesterEmail: "ada@example.com", PoPSignature: pop, RemoteIP: "192.0.2.7"}
}
