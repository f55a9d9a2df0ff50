package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
	"github.com/caddy-mastio/caddy-mastio/internal/redistest"
	"github.com/caddy-mastio/caddy-mastio/internal/testutil"
)

// sessionAt is a session of id against the gateway s (an identity knows
// the gateway it enrolled with; the instances of a deployment all serve
// it).
func sessionAt(t *testing.T, id *client.Identity, s *server) *client.Session {
	t.Helper()
	tlsConf := id.TLSConfig()
	tlsConf.RootCAs = s.rootPool()
	sess, err := id.NewSession(s.url(""), &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true})
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// whoami calls the guarded route of s with a fresh proof for tok, over a
// new connection with the agent's certificate (no token renewal behind
// the test's back): the status, or 0 when the handshake refuses the
// certificate.
func whoami(t *testing.T, s *server, id *client.Identity, sess *client.Session, tok string) int {
	t.Helper()
	proof, err := sess.Proof("GET", s.url("/whoami"), tok)
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := id.TLSConfig()
	tlsConf.RootCAs = s.rootPool()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest("GET", s.url("/whoami"), nil)
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", proof)
	resp, err := c.Do(req)
	if err != nil {
		if strings.Contains(err.Error(), "bad certificate") || strings.Contains(err.Error(), "certificate") {
			return 0
		}
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestTwoInstancesShareEverything runs two Caddy processes, each with its
// own data directory and port, on one Postgres database and one
// key-encryption key: an agent created on A works on B; a revocation on B
// refuses the agent on A within a second (measured); a policy change on A
// applies to B's next MCP call; the audit chain both wrote verifies.
func TestTwoInstancesShareEverything(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(workDir(t), "kek")
	if err := os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(kek)), 0o600); err != nil {
		t.Fatal(err)
	}
	if asRoot() {
		os.Chown(kekFile, testutil.NobodyUID, testutil.NobodyUID)
	}
	up := mcpUpstream(t, true)
	env := []string{"MASTIO_DATABASE_URL=" + pgtest.Database(t), "MASTIO_KEK_FILE=" + kekFile, "MCP_JSON_UPSTREAM=" + up.URL}
	global := `
		database {$MASTIO_DATABASE_URL}
		key_encryption_key_file {$MASTIO_KEK_FILE}
		policy {
			allow capability:mcp:call tools/call weather/get_forecast
		}`
	routes := `
	handle /mcp/json {
		mastio_mcp weather
		reverse_proxy {$MCP_JSON_UPSTREAM}
	}`
	a := exampleServer(t, global, routes, env...)
	b := exampleServer(t, global, routes, env...)
	if ra, rb := a.rootPool(), b.rootPool(); !ra.Equal(rb) {
		t.Fatal("the instances have different Org CAs")
	}
	for _, s := range []*server{a, b} {
		keys, _ := filepath.Glob(filepath.Join(s.dataDir, "*", "*.key"))
		if len(keys) != 0 {
			t.Fatalf("private keys on disk: %v", keys)
		}
	}

	// An agent created on A works on B.
	roamer := makeIdentity(t, a, "roamer", "mcp:call")
	onB := sessionAt(t, roamer, b)
	tokB, err := onB.Token(context.Background())
	if err != nil {
		t.Fatalf("a token from B for an agent created on A: %v", err)
	}
	if code := whoami(t, b, roamer, onB, tokB); code != 200 {
		t.Fatalf("the agent on B: %d", code)
	}
	onA := sessionAt(t, roamer, a)
	tokA, err := onA.Token(context.Background())
	if err != nil || whoami(t, a, roamer, onA, tokA) != 200 {
		t.Fatalf("the agent on A: %v", err)
	}

	// A policy change on A applies to B's next call.
	caller := makeIdentity(t, a, "caller", "mcp:call")
	cs := connectMCPSession(t, b, sessionAt(t, caller, b))
	call := func(tool string) error {
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"city": "Turin"}})
		return err
	}
	if err := call("set_alert"); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("set_alert on B before the change: %v", err)
	}
	if code, body := a.adminCall(t, "PUT", "/v1/admin/policies", adminSecret, map[string]string{
		"rules": "allow capability:mcp:call tools/call weather/set_alert\n"}); code != 200 {
		t.Fatalf("policy on A: %d %v", code, body["_raw"])
	}
	applied := time.Now()
	for call("set_alert") != nil {
		if time.Since(applied) > 5*time.Second {
			t.Fatal("the policy changed on A does not apply on B")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// A revocation on B refuses the agent on A within a second.
	revoked := time.Now()
	if code, body := b.adminCall(t, "POST", "/v1/admin/agents/orga::roamer/revoke", adminSecret, nil); code != 200 {
		t.Fatalf("revoke on B: %d %v", code, body["_raw"])
	}
	for code := whoami(t, a, roamer, onA, tokA); code != 401 && code != 0; code = whoami(t, a, roamer, onA, tokA) {
		if time.Since(revoked) > 5*time.Second {
			t.Fatal("the agent revoked on B is still accepted on A")
		}
	}
	took := time.Since(revoked)
	if took > time.Second {
		t.Errorf("the revocation took %s to refuse the agent on A, more than 1s", took)
	}
	t.Logf("from the revoke call on B to the agent refused on A: %s (including the call)", took)

	// The chain both instances wrote is one, and verifies.
	code, _, body := a.get(a.client(), "/v1/admin/audit/verify", "X-Admin-Secret", adminSecret)
	var v struct {
		OK      bool  `json:"ok"`
		Checked int64 `json:"rows_verified"`
	}
	json.Unmarshal([]byte(body), &v)
	if code != 200 || !v.OK {
		t.Fatalf("audit verify: %d %s", code, body)
	}
	starts := 0
	for _, r := range a.exportAudit(t) {
		if r.Type == "system.start" {
			starts++
		}
	}
	if starts != 2 {
		t.Fatalf("%d system.start rows in the one chain, want one per instance", starts)
	}
}

// connectMCPSession connects an MCP client through sess.
func connectMCPSession(t *testing.T, s *server, sess *client.Session) *mcp.ClientSession {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "e2e-agent", Version: "1.0.0"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: s.url("/mcp/json"), HTTPClient: sess.HTTPClient(), MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// via sends the requests of a client to one instance of a deployment
// reached at its public URL: the URL's host becomes the instance's.
type via struct {
	instance string // localhost:port
	base     http.RoundTripper
}

func (v via) RoundTrip(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.URL.Host, out.Host = v.instance, v.instance
	resp, err := v.base.RoundTrip(out)
	if resp != nil {
		resp.Request = r // the client sees the answer to the request it made (nonces are kept by host)
	}
	return resp, err
}

// TestReplayRefusedAcrossInstances: two instances behind one public URL
// share Redis: a proof used on A is refused when replayed on B, a nonce A
// handed out is good on B, rate limits count once across both, and with
// Redis down requests that need a replay check get 503 (fail closed)
// until it is back.
func TestReplayRefusedAcrossInstances(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	kekFile := filepath.Join(workDir(t), "kek")
	os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(kek)), 0o600)
	if asRoot() {
		os.Chown(kekFile, testutil.NobodyUID, testutil.NobodyUID)
	}
	const public = "https://mastio.test:9443"
	env := []string{"MASTIO_DATABASE_URL=" + pgtest.Database(t), "MASTIO_KEK_FILE=" + kekFile, "MASTIO_REDIS_URL=" + redistest.URL(t)}
	global := `
		database {$MASTIO_DATABASE_URL}
		key_encryption_key_file {$MASTIO_KEK_FILE}
		redis {$MASTIO_REDIS_URL}
		public_url ` + public
	a := exampleServer(t, global, "", env...)
	b := exampleServer(t, global, "", env...)
	id := makeIdentity(t, a, "roamer", "api:read")
	transport := func(s *server) http.RoundTripper {
		tlsConf := id.TLSConfig()
		tlsConf.RootCAs, tlsConf.ServerName = s.rootPool(), "localhost"
		return via{instance: strings.TrimPrefix(s.url(""), "https://"), base: &http.Transport{TLSClientConfig: tlsConf}}
	}
	onA, err := id.NewSession(public, transport(a))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := onA.Token(context.Background())
	if err != nil {
		t.Fatalf("a token from A: %v", err)
	}
	var lastBody string
	send := func(s *server, proof string) int {
		req, _ := http.NewRequest("GET", public+"/whoami", nil)
		req.Header.Set("Authorization", "DPoP "+tok)
		req.Header.Set("DPoP", proof)
		resp, err := (&http.Client{Transport: transport(s), Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lastBody = string(b)
		return resp.StatusCode
	}
	proof, _ := onA.Proof("GET", public+"/whoami", tok)
	if code := send(a, proof); code != 200 {
		t.Fatalf("the proof on A: %d", code)
	}
	if code := send(b, proof); code != 401 || !strings.Contains(lastBody, "already used") {
		t.Fatalf("the same proof replayed on B: %d %s, want 401 naming the replay", code, lastBody)
	}
	// A fresh proof, with the nonce A handed out, is good on B.
	fresh, _ := onA.Proof("GET", public+"/whoami", tok)
	if code := send(b, fresh); code != 200 {
		t.Fatalf("a fresh proof with A's nonce on B: %d", code)
	}

	// A client assertion used on A is refused on B (its id is kept in the
	// shared database).
	assertion, _ := onA.Assertion("")
	tokenRequest := func(s *server) (int, string) {
		proof, _ := onA.Proof("POST", public+"/v1/auth/token", "")
		req, _ := http.NewRequest("POST", public+"/v1/auth/token", strings.NewReader(`{"client_assertion":"`+assertion+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("DPoP", proof)
		resp, err := (&http.Client{Transport: transport(s), Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if code, body := tokenRequest(a); code != 200 {
		t.Fatalf("the assertion on A: %d %s", code, body)
	}
	if code, body := tokenRequest(b); code != 401 || !strings.Contains(body, "already used") {
		t.Fatalf("the same assertion on B: %d %s, want 401 naming the replay", code, body)
	}

	// Rate limits count once across instances: 5 enrollment starts a
	// minute per address, spread over A and B, the sixth refused.
	for i := range 6 {
		s := []*server{a, b}[i%2]
		resp, err := s.client().Post(s.url("/v1/enrollment/start"), "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if limited := resp.StatusCode == 429; limited != (i == 5) {
			t.Fatalf("enrollment start %d (on %s): %d", i+1, []string{"A", "B"}[i%2], resp.StatusCode)
		}
	}

	redistest.Stop(t)
	t.Cleanup(func() { redistest.Restart(t) })
	down, _ := onA.Proof("GET", public+"/whoami", tok)
	if code := send(b, down); code != 503 {
		t.Fatalf("with Redis down: %d, want 503", code)
	}
	redistest.Restart(t)
	waitFor(t, "B to use Redis again", 15*time.Second, func() bool {
		p, _ := onA.Proof("GET", public+"/whoami", tok)
		return send(b, p) == 200
	})
}
