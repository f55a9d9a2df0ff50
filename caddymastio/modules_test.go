package caddymastio

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// modulesServer runs Caddy in-process with every HTTP module of this
// package on one plain-HTTP server with an access log:
//
//	/guarded      mastio_auth (token), then a response naming the agent
//	/scoped       mastio_auth requiring a scope no agent has
//	/mtls         mastio_auth require mtls (no TLS here: refused)
//	/weather/*    mastio_mcp weather, then reverse_proxy to an MCP server
//	anything else mastio, then 418 for what it passes on
func modulesServer(t *testing.T) (base string, app *App, accessLog string) {
	up := mcptest.Weather(t, false)

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	accessLog = filepath.Join(t.TempDir(), "access.log")
	respond := func(status int, body string) map[string]any {
		return map[string]any{"handler": "static_response", "status_code": status, "body": body}
	}
	route := func(path string, handle ...any) map[string]any {
		return map[string]any{"match": []any{map[string]any{"path": []string{path}}}, "handle": handle}
	}
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{
			"default": map[string]any{"level": "ERROR", "exclude": []string{"http.log.access"}},
			"access": map[string]any{"writer": map[string]any{"output": "file", "filename": accessLog},
				"encoder": map[string]any{"format": "json"}, "include": []string{"http.log.access"}},
		}},
		"apps": map[string]any{
			"mastio": map[string]any{"data_dir": t.TempDir(), "admin_secret": testSecret,
				"policy": "allow * tools/call weather/get_forecast\n"},
			"http": map[string]any{"servers": map[string]any{"modules": map[string]any{
				"listen":          []string{addr},
				"automatic_https": map[string]any{"disable": true},
				"logs":            map[string]any{},
				"routes": []any{
					route("/guarded", map[string]any{"handler": "mastio_auth"}, respond(200, "agent={mastio.agent_id} scope={mastio.scope}")),
					route("/scoped", map[string]any{"handler": "mastio_auth", "scopes": []string{"admin:everything"}}, respond(200, "in")),
					route("/mtls", map[string]any{"handler": "mastio_auth", "require": "mtls"}, respond(200, "in")),
					route("/weather/*", map[string]any{"handler": "mastio_mcp", "server": "weather"},
						map[string]any{"handler": "reverse_proxy", "upstreams": []map[string]string{{"dial": up.Listener.Addr().String()}}}),
					map[string]any{"handle": []any{map[string]any{"handler": "mastio"}, respond(418, "passed on")}},
				},
			}}},
		},
	}
	raw, _ := json.Marshal(cfg)
	if err := caddy.Load(raw, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { quietCaddy() })
	v, err := caddy.ActiveContext().App("mastio")
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr, v.(*App), accessLog
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestModulesGuardFilterAndRedact(t *testing.T) {
	base, app, accessLog := modulesServer(t)
	m := app.Mastio()
	a := mastiotest.NewAgent(t, m, "worker", "mcp:call")
	s, err := a.Identity.NewSession(base, &http.Transport{})
	if err != nil {
		t.Fatal(err)
	}
	c := s.HTTPClient()

	if status, body := get(t, c, base+"/guarded"); status != 200 || body != "agent="+a.ID+" scope=mcp:call" {
		t.Fatalf("guarded: %d %q", status, body)
	}
	if status, body := get(t, c, base+"/scoped"); status != 403 || !strings.Contains(body, "insufficient_scope") {
		t.Fatalf("scoped: %d %s", status, body)
	}
	if refused := mastiotest.Events(t, m, "auth.refused"); len(refused) != 1 || refused[0].Subject != a.ID {
		t.Fatalf("the scope refusal is audited: %+v", refused)
	}
	if status, body := get(t, http.DefaultClient, base+"/mtls"); status != 401 || !strings.Contains(body, "client_cert_required") {
		t.Fatalf("mtls without TLS: %d %s", status, body)
	}
	if status, _ := get(t, http.DefaultClient, base+"/healthz"); status != 200 {
		t.Fatalf("the mastio handler's own path: %d", status)
	}
	if status, body := get(t, http.DefaultClient, base+"/elsewhere"); status != 418 || body != "passed on" {
		t.Fatalf("another path: %d %s", status, body)
	}

	mc := mcpsdk.NewClient(&mcpsdk.Implementation{Name: "agent", Version: "1"}, nil)
	cs, err := mc.Connect(context.Background(), &mcpsdk.StreamableClientTransport{Endpoint: base + "/weather/mcp", HTTPClient: c,
		DisableStandaloneSSE: true, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	tools, err := cs.ListTools(context.Background(), nil)
	if err != nil || len(tools.Tools) != 1 || tools.Tools[0].Name != "get_forecast" {
		t.Fatalf("tools through mastio_mcp: %+v %v", tools, err)
	}
	if _, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "delete_everything"}); err == nil {
		t.Fatal("a denied tool was called")
	}

	// Every request carried a token and a proof; the access log has the
	// entries, with the proofs redacted and no token.
	tok, _ := s.Token(context.Background())
	data, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"uri":"/guarded"`) || !strings.Contains(string(data), `"REDACTED"`) {
		t.Fatalf("the access log lacks the redacted entries:\n%s", data)
	}
	if strings.Contains(string(data), tok) || strings.Contains(string(data), "eyJ0eXAiOiJkcG9wK2p3dCI") {
		t.Fatal("a token or a DPoP proof reached the access log")
	}
}

// The handler answers 503 while the state cannot be opened, and says so
// without naming the path.
func TestHandlerRefusesWhileTheStateCannotOpen(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "mastio.db")
	os.Mkdir(db, 0o700) // a directory where the database file should be: it cannot be opened
	a := &App{DataDir: dir, AdminSecret: testSecret}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Cleanup() })
	w := httptest.NewRecorder()
	if a.readyOrRefuse(w) || w.Code != 503 || !strings.Contains(w.Body.String(), "not_ready") || strings.Contains(w.Body.String(), dir) {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if err := a.Start(); err == nil {
		t.Fatal("Start succeeded without a database")
	}
}

func TestIssuerSignsServerCertificatesWithTheOrgCA(t *testing.T) {
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	iss := &Issuer{m: a.Mastio(), Lifetime: caddy.Duration(time.Hour)}
	if err := iss.Validate(); err != nil || iss.IssuerKey() != "mastio-"+a.Mastio().OrgID() {
		t.Fatalf("issuer: %v %q", err, iss.IssuerKey())
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"mastio.internal"}}, key)
	csr, _ := x509.ParseCertificateRequest(der)
	got, err := iss.Issue(context.Background(), csr)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := pki.ParseCertificatesPEM(got.Certificate)
	if err != nil || len(certs) != 2 {
		t.Fatalf("chain: %d %v", len(certs), err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(certs[1])
	if _, err := certs[0].Verify(x509.VerifyOptions{DNSName: "mastio.internal", Roots: a.Mastio().CA().RootPool(), Intermediates: inter}); err != nil {
		t.Fatalf("the server certificate does not chain to the Org root: %v", err)
	}
	if n := len(mastiotest.Events(t, a.Mastio(), "pki.server_cert_issued")); n != 1 {
		t.Fatalf("%d pki.server_cert_issued rows", n)
	}
}

func TestAuditVerifyCommand(t *testing.T) {
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := auditCommand()
	cmd.SetArgs([]string{"verify", "--db", a.dbPath})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
}
