package endpoints_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// env is the Mastio's endpoints over the core on a temporary SQLite file,
// served over real TLS on loopback.
type env struct {
	t    *testing.T
	m    *mastio.Mastio
	h    *endpoints.Handler
	srv  *httptest.Server
	anon *http.Client // trusts the Org CA, presents no certificate
}

func newEnv(t *testing.T, s mastio.Settings) *env {
	t.Helper()
	m := mastiotest.New(t, s, nil)
	h := endpoints.New(m, zap.NewNop(), nil)
	e := &env{t: t, m: m, h: h}
	e.srv = mastiotest.Serve(t, m, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.Owns(r) {
			w.WriteHeader(http.StatusTeapot) // "passed on"
			return
		}
		h.ServeHTTP(w, r)
	}))
	e.anon = mastiotest.Client(m)
	return e
}

// call sends a request and returns the answer with its body read.
func (e *env) call(c *http.Client, method, path, body string, hdr ...string) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

// certClient presents the agent's certificate.
func (e *env) certClient(a *mastiotest.Agent) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: a.Identity.TLSConfig()}}
}

func decode(t *testing.T, body string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("not JSON: %s", body)
	}
	return v
}

func TestHealthAndOrgCA(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	if resp, body := e.call(e.anon, "GET", "/healthz", ""); resp.StatusCode != 200 || strings.TrimSpace(body) != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	if _, body := e.call(e.anon, "GET", "/health", ""); decode(t, body)["version"] == "" {
		t.Fatalf("health names no version: %s", body)
	}
	resp, body := e.call(e.anon, "GET", "/readyz", "")
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") != "no-store" ||
		strings.TrimSpace(body) != `{"status":"ready","checks":{"audit_chain":"ok","database":"ok","pki":"ok","signing_keys":"ok"}}` {
		t.Fatalf("readyz: %d %s", resp.StatusCode, body)
	}
	resp, body = e.call(e.anon, "GET", "/pki/ca.crt", "")
	if resp.StatusCode != 200 || body != string(e.m.CA().RootPEM()) || resp.Header.Get("Content-Type") != "application/x-pem-file" ||
		resp.Header.Get("Cache-Control") != "public, max-age=300" {
		t.Fatalf("ca.crt: %d %v", resp.StatusCode, resp.Header)
	}
	etag := resp.Header.Get("ETag")
	if resp, body := e.call(e.anon, "GET", "/pki/ca.crt", "", "If-None-Match", `"other", W/`+etag); resp.StatusCode != 304 || body != "" {
		t.Fatalf("conditional GET: %d", resp.StatusCode)
	}
	if resp, body := e.call(e.anon, "HEAD", "/pki/ca.crt", ""); resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
}

func TestUnservedPathsAndMethods(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	resp, body := e.call(e.anon, "POST", "/healthz", "")
	if resp.StatusCode != 405 || resp.Header.Get("Allow") != "GET, HEAD" || decode(t, body)["error"] != "method_not_allowed" {
		t.Fatalf("POST /healthz: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if resp, body := e.call(e.anon, "GET", "/v1/enrollment/start", ""); resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" {
		t.Fatalf("GET enrollment start: %d %s", resp.StatusCode, body)
	}
	for path, want := range map[string]string{
		"/v1/nothing":          "nothing is served at /v1/nothing",
		"/v1/chat/completions": "LLM proxying",
		"/v1/admin/agents":     "the admin API is not built into this Caddy", // package admin is not linked into this test
		"/proxy/dashboard":     "no dashboard page here",
		"/.well-known/other":   "nothing is served",
		"/v1//agents/me":       "nothing is served", // never redirected to a cleaned path
	} {
		resp, body := e.call(e.anon, "GET", path, "")
		if resp.StatusCode != 404 || decode(t, body)["error"] != "not_found" || !strings.Contains(body, want) {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	for _, path := range []string{"/app", "/", "/app/v1/mcp"} {
		if resp, _ := e.call(e.anon, "GET", path, ""); resp.StatusCode != http.StatusTeapot {
			t.Errorf("%s is not passed on: %d", path, resp.StatusCode)
		}
	}
	if resp, _ := e.call(e.anon, "GET", "/v1", ""); resp.StatusCode != 404 {
		t.Errorf("/v1 (the namespace itself): %d, want 404", resp.StatusCode)
	}
}

// Requests that could act on TLS early data (which an attacker can
// replay) are refused with 425, whatever the route.
func TestEarlyDataIsRefused(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for _, path := range []string{"/v1/auth/token", "/v1/enrollment/start", "/registry/agents/x/revoke"} {
		r := httptest.NewRequest("POST", "https://mastio.test"+path, strings.NewReader("{}"))
		r.TLS = &tls.ConnectionState{HandshakeComplete: false}
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != http.StatusTooEarly || !strings.Contains(w.Body.String(), "too_early") {
			t.Errorf("%s in early data: %d %s", path, w.Code, w.Body)
		}
	}
}

func TestReadinessNamesTheFailingCheckAndRecovers(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	db := filepath.Join(e.m.DataDir(), "mastio.db")
	if err := os.Rename(db, db+".aside"); err != nil {
		t.Fatal(err)
	}
	var body string
	// The probe's result is reused for a second: poll until it is redone.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var resp *http.Response
		resp, body = e.call(e.anon, "GET", "/readyz", "")
		if resp.StatusCode == 503 || time.Now().After(deadline) {
			break
		}
	}
	v := decode(t, body)
	if v["status"] != "not_ready" || v["checks"].(map[string]any)["database"] != "error" || v["reasons"].(map[string]any)["database"] != "missing" {
		t.Fatalf("readyz with the database gone: %s", body)
	}
	if strings.Contains(body, db) {
		t.Fatal("readyz reveals the database path to anonymous callers")
	}
	os.Rename(db+".aside", db)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, _ := e.call(e.anon, "GET", "/readyz", ""); resp.StatusCode == 200 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("readyz did not recover: %d", resp.StatusCode)
		}
	}
}

func TestWellKnownDocuments(t *testing.T) {
	public := "https://mastio.example.com:9443"
	u, _ := url.Parse(public)
	e := newEnv(t, mastio.Settings{PublicURL: u})
	resp, body := e.call(e.anon, "GET", "/.well-known/jwks.json", "")
	keys, _ := decode(t, body)["keys"].([]any)
	if resp.StatusCode != 200 || len(keys) != 1 || resp.Header.Get("Content-Type") != "application/jwk-set+json" {
		t.Fatalf("jwks: %d %s", resp.StatusCode, body)
	}
	if resp, _ := e.call(e.anon, "GET", "/.well-known/jwks-local.json", "", "If-None-Match", resp.Header.Get("ETag")); resp.StatusCode != 304 {
		t.Fatalf("jwks with its ETag: %d", resp.StatusCode)
	}
	_, body = e.call(e.anon, "GET", "/.well-known/oauth-authorization-server", "")
	as := decode(t, body)
	if as["issuer"] != public || as["token_endpoint"] != public+"/v1/auth/token" {
		t.Fatalf("authorization server metadata: %s", body)
	}
	_, body = e.call(e.anon, "GET", "/.well-known/oauth-protected-resource/v1/mcp", "")
	pr := decode(t, body)
	if pr["resource"] != public+"/v1/mcp" || pr["dpop_bound_access_tokens_required"] != true {
		t.Fatalf("protected resource metadata: %s", body)
	}
}
