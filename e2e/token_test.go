package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// echoUpstream answers with what reached it: the identity headers the
// gateway set and whether the agent's credentials were passed through.
func echoUpstream(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{
			"agent": r.Header.Get("X-Agent"), "scope": r.Header.Get("X-Scope"), "jkt": r.Header.Get("X-JKT"),
			"spiffe": r.Header.Get("X-Spiffe"), "authorization": r.Header.Get("Authorization"), "dpop": r.Header.Get("DPoP"),
			"ssl_client_cert": r.Header.Get("X-SSL-Client-Cert"), "path": r.URL.Path,
			"x_agent_id": strings.Join(r.Header.Values("X-Agent-Id"), ","), "x_agent_spiffe_id": r.Header.Get("X-Agent-Spiffe-Id"),
			"x_mastio_scope": r.Header.Get("X-Mastio-Scope"), "x_cullis_agent": r.Header.Get("X-Cullis-Agent"),
		})
	}))
	t.Cleanup(srv.Close)
	return srv
}

const guardedRoutes = `
	handle /api/* {
		mastio_auth
		reverse_proxy {$MASTIO_UPSTREAM} {
			header_up X-Agent {mastio.agent_id}
			header_up X-Scope {mastio.scope}
			header_up X-JKT {mastio.jkt}
			header_up X-Spiffe {mastio.spiffe_id}
		}
	}
	handle /scoped/* {
		mastio_auth {
			scope admin:write
		}
		reverse_proxy {$MASTIO_UPSTREAM}
	}
	handle /mtls/* {
		mastio_auth mtls
		reverse_proxy {$MASTIO_UPSTREAM} {
			header_up X-Agent {mastio.agent_id}
		}
	}
`

// tokenServer is identityServer plus guarded routes to an echo upstream.
func tokenServer(t testing.TB) (*server, *httptest.Server) {
	t.Helper()
	up := echoUpstream(t)
	return exampleServer(t, "", guardedRoutes, "MASTIO_UPSTREAM="+up.URL), up
}

// makeIdentity registers an agent through the admin API and writes an
// identity directory for it, as enrollment would.
func makeIdentity(t testing.TB, s *server, name string, caps ...string) *client.Identity {
	t.Helper()
	code, created := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": name, "capabilities": caps})
	if code != 201 {
		t.Fatalf("create %s: %d %v", name, code, created["_raw"])
	}
	return identityFrom(t, s, created)
}

// identityFrom writes the identity directory of a created agent.
func identityFrom(t testing.TB, s *server, created map[string]any) *client.Identity {
	t.Helper()
	caps := []string{}
	if agent, ok := created["agent"].(map[string]any); ok {
		for _, c := range agent["capabilities"].([]any) {
			caps = append(caps, c.(string))
		}
	}
	name := strings.SplitN(created["agent_id"].(string), "::", 2)[1]
	dir := filepath.Join(t.TempDir(), name)
	os.MkdirAll(dir, 0o700)
	ca, _ := os.ReadFile(filepath.Join(s.dataDir, "pki", "org-ca.crt"))
	meta, _ := json.Marshal(map[string]any{"agent_id": created["agent_id"], "capabilities": caps, "site_url": s.url("")})
	for f, content := range map[string]string{client.CertFile: created["cert_pem"].(string), client.KeyFile: created["private_key_pem"].(string),
		client.CAFile: string(ca), client.MetadataFile: string(meta)} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	id, err := client.LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func readBody(t testing.TB, resp *http.Response) map[string]any {
	t.Helper()
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	json.Unmarshal(raw, &out)
	out["_raw"] = string(raw)
	return out
}

func TestMintAndCallGuardedProxy(t *testing.T) {
	s, _ := tokenServer(t)
	id := makeIdentity(t, s, "worker", "mcp:call", "api:read")
	sess := id.Session()
	resp, err := sess.HTTPClient().Get(s.url("/api/echo?x=1"))
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != 200 || body["agent"] != "orga::worker" || body["scope"] != "mcp:call api:read" ||
		body["jkt"] != sess.JKT() || body["spiffe"] != "spiffe://mastio.local/orga/worker" {
		t.Fatalf("guarded call: %d %v", resp.StatusCode, body["_raw"])
	}
	if body["authorization"] != "" || body["dpop"] != "" {
		t.Fatalf("the agent's credentials reached the upstream: %v", body["_raw"])
	}
	// The token is bound to the DPoP key and to the client certificate.
	tok, _ := sess.Token(context.Background())
	parsed, _ := jwt.Parse(tok)
	var claims map[string]any
	json.Unmarshal(parsed.Payload, &claims)
	cnf := claims["cnf"].(map[string]any)
	if cnf["jkt"] != sess.JKT() || cnf["x5t#S256"] != jwt.CertThumbprint(id.Leaf.Raw) || claims["sub"] != "orga::worker" ||
		claims["scope"] != "mcp:call api:read" || parsed.Typ != "at+jwt" {
		t.Fatalf("token claims %v", claims)
	}
	if exp, iat := claims["exp"].(float64), claims["iat"].(float64); exp-iat != 300 {
		t.Fatalf("token lifetime %v, want the 5 minute default", exp-iat)
	}
	// mtls mode needs only the certificate.
	mt := &http.Client{Transport: &http.Transport{TLSClientConfig: id.TLSConfig()}}
	resp, err = mt.Get(s.url("/mtls/x"))
	if err != nil {
		t.Fatal(err)
	}
	if b := readBody(t, resp); resp.StatusCode != 200 || b["agent"] != "orga::worker" {
		t.Fatalf("mtls route: %d %v", resp.StatusCode, b["_raw"])
	}
	// A missing scope is 403 insufficient_scope.
	resp, _ = sess.HTTPClient().Get(s.url("/scoped/x"))
	if b := readBody(t, resp); resp.StatusCode != 403 || b["error"] != "insufficient_scope" ||
		!strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Fatalf("scoped route: %d %v", resp.StatusCode, b["_raw"])
	}
	s.stop()
	counts := eventCounts(t, openDB(t, s.dataDir))
	if counts["token.issued"] != 1 {
		t.Fatalf("token.issued audited %d times, want 1 (the session reuses its token)", counts["token.issued"])
	}
}

func TestKeyRotationMidTrafficFailsNothing(t *testing.T) {
	s, _ := tokenServer(t)
	var ids []*client.Identity
	for i := 0; i < 4; i++ {
		ids = append(ids, makeIdentity(t, s, fmt.Sprintf("load%d", i), "mcp:call"))
	}
	var ok, failed atomic.Int64
	var lastFail atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func(i int, id *client.Identity) {
			defer wg.Done()
			sess := id.Session()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if i%2 == 1 && n%10 == 0 {
					sess.Invalidate() // half the agents also mint new tokens during the rotation
				}
				resp, err := sess.HTTPClient().Get(s.url("/api/load"))
				if err != nil {
					failed.Add(1)
					lastFail.Store(err.Error())
					continue
				}
				b := readBody(t, resp)
				if resp.StatusCode != 200 {
					failed.Add(1)
					lastFail.Store(fmt.Sprint(resp.StatusCode, b["_raw"]))
				} else {
					ok.Add(1)
				}
			}
		}(i, id)
	}
	waitFor(t, "traffic to flow", 10*time.Second, func() bool { return ok.Load() > 20 })
	var kids []string
	for r := 0; r < 2; r++ {
		code, rot := s.adminCall(t, "POST", "/v1/admin/keys/rotate", adminSecret, nil)
		if code != 200 || rot["new_kid"] == nil {
			t.Fatalf("rotate: %d %v", code, rot["_raw"])
		}
		kids = append(kids, rot["new_kid"].(string))
		before := ok.Load()
		waitFor(t, "traffic after the rotation", 10*time.Second, func() bool { return ok.Load() > before+20 })
	}
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across two key rotations; last: %v", failed.Load(), ok.Load()+failed.Load(), lastFail.Load())
	}
	// The JWKS publishes the active key and both keys still in grace.
	code, hdr, body := s.get(s.client(), "/.well-known/jwks.json")
	var jwks struct {
		Keys []map[string]string `json:"keys"`
	}
	decodeJSON(t, body, &jwks)
	if code != 200 || len(jwks.Keys) != 3 || hdr.Get("ETag") == "" || !strings.Contains(hdr.Get("Cache-Control"), "max-age") {
		t.Fatalf("JWKS after two rotations: %d %s", code, body)
	}
	if c, _, _ := s.get(s.client(), "/.well-known/jwks-local.json", "If-None-Match", hdr.Get("ETag")); c != 304 {
		t.Fatalf("JWKS revalidation: %d", c)
	}
	// New tokens are signed with the newest key.
	tok, err := makeIdentity(t, s, "late", "mcp:call").Session().Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := jwt.Parse(tok); p.Kid != kids[1] {
		t.Fatalf("new token kid %s, want %s", p.Kid, kids[1])
	}
	t.Logf("%d requests across two rotations, none failed", ok.Load())
	s.stop()
	if n := eventCounts(t, openDB(t, s.dataDir))["token.signing_key_rotated"]; n != 2 {
		t.Fatalf("rotations audited: %d", n)
	}
}

// do sends a request with exact header lists and an optional client cert.
func (s *server) do(t testing.TB, method, path string, header map[string][]string, cert *tls.Certificate, body []byte) *http.Response {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.rootPool(), ServerName: "localhost"}
	if cert != nil {
		c := *cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
	}
	req, _ := http.NewRequest(method, s.url(path), bytes.NewReader(body))
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

func TestTokenEndpointRefusals(t *testing.T) {
	s, _ := tokenServer(t)
	id := makeIdentity(t, s, "agent", "mcp:call")
	sess := id.Session()
	a := newAttacker(t, s, id)
	post := func(body string, proof string, cert *tls.Certificate) map[string]any {
		h := map[string][]string{"Content-Type": {"application/json"}}
		if proof != "" {
			h["DPoP"] = []string{proof}
		}
		resp := s.do(t, "POST", "/v1/auth/token", h, cert, []byte(body))
		b := readBody(t, resp)
		b["_status"] = resp.StatusCode
		return b
	}
	tokProof := func() string {
		return a.proof(a.dkey, "", func(h, c map[string]any) {
			c["htm"], c["htu"] = "POST", s.url("/v1/auth/token")
			delete(c, "ath")
		})
	}
	assertion, _ := sess.Assertion("")
	body := `{"client_assertion":"` + assertion + `"}`
	if b := post(body, "", nil); b["_status"] != 401 || b["error"] != "invalid_dpop_proof" {
		t.Fatalf("no DPoP proof at the token endpoint: %v", b["_raw"])
	}
	if b := post(body, tokProof(), nil); b["_status"] != 200 || b["token_type"] != "DPoP" {
		t.Fatalf("valid request: %v", b["_raw"])
	}
	if b := post(body, tokProof(), nil); b["_status"] != 401 || b["error"] != "invalid_client" || !strings.Contains(b["_raw"].(string), "already used") {
		t.Fatalf("assertion replay: %v", b["_raw"])
	}
	// An assertion whose x5c chains to another CA.
	ca, _, _ := pki.LoadOrCreate(pki.Config{Dir: filepath.Join(t.TempDir(), "otherca")})
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, _ := ca.IssueAgent(pki.AgentCert{PublicKey: k.Public(), Identity: pki.AgentIdentity{TrustDomain: "mastio.local", Org: "orga", Name: "agent"}})
	now := time.Now().Unix()
	foreign, _ := jwt.Sign(k, map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(leaf.Raw),
		base64.StdEncoding.EncodeToString(ca.Intermediate().Raw)}}, map[string]any{"sub": "orga::agent", "iss": "orga::agent",
		"aud": "agent-trust-broker", "iat": now, "exp": now + 60, "jti": "x1"})
	if b := post(`{"client_assertion":"`+foreign+`"}`, tokProof(), nil); b["_status"] != 401 || !strings.Contains(b["_raw"].(string), "does not chain to the Org CA") {
		t.Fatalf("foreign CA assertion: %v", b["_raw"])
	}
	// An assertion naming another agent than its certificate.
	signer := id.Certificate.PrivateKey.(crypto.Signer)
	lying, _ := jwt.Sign(signer, map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(id.Leaf.Raw)}},
		map[string]any{"sub": "orga::other", "iss": "orga::other", "aud": "agent-trust-broker", "iat": now, "exp": now + 60, "jti": "x2"})
	if b := post(`{"client_assertion":"`+lying+`"}`, tokProof(), nil); b["_status"] != 401 || !strings.Contains(b["_raw"].(string), "sub") {
		t.Fatalf("lying sub: %v", b["_raw"])
	}
	// A long-lived assertion.
	long, _ := jwt.Sign(signer, map[string]any{"alg": "ES256", "typ": "JWT", "x5c": []string{base64.StdEncoding.EncodeToString(id.Leaf.Raw)}},
		map[string]any{"sub": "orga::agent", "iss": "orga::agent", "aud": "agent-trust-broker", "iat": now, "exp": now + 3600, "jti": "x3"})
	if b := post(`{"client_assertion":"`+long+`"}`, tokProof(), nil); b["_status"] != 400 || !strings.Contains(b["_raw"].(string), "longer than") {
		t.Fatalf("long assertion: %v", b["_raw"])
	}
	if b := post(`{"client_assertion":`, tokProof(), nil); b["_status"] != 400 {
		t.Fatalf("malformed body: %v", b["_raw"])
	}
	// The RFC 8414 metadata names the endpoint and the DPoP algorithms.
	_, _, meta := s.get(s.client(), "/.well-known/oauth-authorization-server")
	if !contains(meta, `"token_endpoint":"`+s.url("/v1/auth/token")+`"`, `"dpop_signing_alg_values_supported":["ES256","PS256","EdDSA"]`) {
		t.Fatalf("AS metadata: %s", meta)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
