package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// testIdentity writes an identity directory for acme::bot with a
// certificate from a fresh Org CA, as an enrollment would.
func testIdentity(t *testing.T) (*Identity, *pki.CA) {
	t.Helper()
	ca, _, err := pki.LoadOrCreate(pki.Config{Dir: filepath.Join(t.TempDir(), "pki"), Org: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := ca.IssueAgent(pki.AgentCert{PublicKey: key.Public(), Identity: pki.AgentIdentity{TrustDomain: "mastio.local", Org: "acme", Name: "bot"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "identity")
	os.MkdirAll(dir, 0o700)
	if err := writePrivate(filepath.Join(dir, KeyFile), key); err != nil {
		t.Fatal(err)
	}
	dkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := writePrivate(filepath.Join(dir, DPoPKeyFile), dkey); err != nil {
		t.Fatal(err)
	}
	writeFile(filepath.Join(dir, CertFile), ca.ChainPEM(leaf), 0o644)
	writeFile(filepath.Join(dir, CAFile), ca.RootPEM(), 0o644)
	writeFile(filepath.Join(dir, MetadataFile), []byte(`{"agent_id":"acme::bot","capabilities":["mcp:call"],"site_url":"https://mastio.example"}`), 0o644)
	id, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id, ca
}

func TestLoadIdentity(t *testing.T) {
	id, _ := testIdentity(t)
	if id.AgentID != "acme::bot" || id.URL != "https://mastio.example" || len(id.Capabilities) != 1 || id.DPoPKey == nil ||
		len(id.Certificate.Certificate) != 2 || id.RootCAs == nil {
		t.Fatalf("%+v", id)
	}
	// A private key others can read is refused: it may have leaked.
	os.Chmod(filepath.Join(id.Dir, KeyFile), 0o644)
	if _, err := LoadIdentity(id.Dir); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("a 0644 agent key: %v", err)
	}
	os.Chmod(filepath.Join(id.Dir, KeyFile), 0o600)
	os.Chmod(filepath.Join(id.Dir, DPoPKeyFile), 0o640)
	if _, err := LoadIdentity(id.Dir); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("a 0640 DPoP key: %v", err)
	}
	os.Chmod(filepath.Join(id.Dir, DPoPKeyFile), 0o600)
	os.Remove(filepath.Join(id.Dir, CertFile))
	if _, err := LoadIdentity(id.Dir); err == nil {
		t.Fatal("an identity without its certificate was loaded")
	}
}

// TestProofAndAssertion checks what the session signs with the verifiers
// the Mastio runs.
func TestProofAndAssertion(t *testing.T) {
	id, ca := testIdentity(t)
	s := id.Session()
	proof, err := s.Proof("post", "https://Mastio.Example:9443/mcp/x?q=1#frag", "the-token")
	if err != nil {
		t.Fatal(err)
	}
	p, perr := dpop.Verify(context.Background(), []string{proof}, dpop.Checks{Method: "post", URL: "https://mastio.example:9443/mcp/x",
		AccessToken: "the-token"})
	if perr != nil {
		t.Fatal(perr)
	}
	sum := sha256.Sum256([]byte("the-token"))
	if p.JKT != s.JKT() || p.ATH != base64.RawURLEncoding.EncodeToString(sum[:]) || p.HTU != "https://Mastio.Example:9443/mcp/x" || p.Nonce != "" {
		t.Fatalf("%+v", p)
	}
	a, err := s.Assertion("challenge-1")
	if err != nil {
		t.Fatal(err)
	}
	as, err := token.VerifyAssertion(a, token.AssertionChecks{Roots: ca.RootPool(), Audiences: []string{token.AssertionAudience}})
	if err != nil {
		t.Fatal(err)
	}
	if as.Subject != "acme::bot" || as.Nonce != "challenge-1" || as.JTI == "" || time.Until(as.Expiry) > token.MaxAssertionLifetime {
		t.Fatalf("%+v", as)
	}
	b, _ := s.Assertion("")
	if b == a {
		t.Fatal("two assertions are the same (one jti)")
	}
}

// fakeMastio is a TLS server that checks what a session sends with the
// Mastio's own verifiers: assertions at /v1/auth/token, DPoP proofs with
// nonces everywhere, tokens on /api.
type fakeMastio struct {
	t      *testing.T
	ca     *pki.CA
	nonces *dpop.Nonces
	replay *dpop.MemoryCache
	srv    *httptest.Server

	mu       sync.Mutex
	tokens   map[string]string // token -> jkt
	minted   int
	revoke   bool // answer the next /api request invalid_token
	apiCalls int
	bodies   []string
}

func newFakeMastio(t *testing.T, ca *pki.CA) *fakeMastio {
	f := &fakeMastio{t: t, ca: ca, tokens: map[string]string{}, replay: dpop.NewMemoryCache(100)}
	f.nonces = dpop.NewNonces([]byte("0123456789abcdef0123456789abcdef"), time.Minute, f.replay.Epoch())
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.RootPool()}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeMastio) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("DPoP-Nonce", f.nonces.Current(time.Now()))
	fail := func(code, desc string) {
		w.Header().Set("WWW-Authenticate", `DPoP error="`+code+`"`)
		w.WriteHeader(401)
		json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
	}
	tok := ""
	if r.URL.Path != "/v1/auth/token" {
		tok = strings.TrimPrefix(r.Header.Get("Authorization"), "DPoP ")
	}
	// The replay cache began before the test's proofs were signed.
	proof, perr := dpop.Verify(r.Context(), r.Header.Values("DPoP"), dpop.Checks{Method: r.Method, URL: f.srv.URL + r.URL.Path,
		AccessToken: tok, Nonces: f.nonces, NonceMode: dpop.NonceRequired})
	if perr != nil {
		fail(perr.Code, perr.Description)
		return
	}
	if r.URL.Path == "/v1/auth/token" {
		var body struct {
			ClientAssertion string `json:"client_assertion"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		if _, err := token.VerifyAssertion(body.ClientAssertion, token.AssertionChecks{Roots: f.ca.RootPool(),
			Audiences: []string{token.AssertionAudience}}); err != nil {
			fail("invalid_client", err.Error())
			return
		}
		f.mu.Lock()
		f.minted++
		tok := "token-" + proof.JTI
		f.tokens[tok] = proof.JKT
		f.mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "DPoP", "expires_in": 300})
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apiCalls++
	if f.revoke || f.tokens[tok] != proof.JKT {
		f.revoke = false
		delete(f.tokens, tok)
		f.mu.Unlock()
		fail("invalid_token", "unknown token")
		f.mu.Lock()
		return
	}
	body, _ := io.ReadAll(r.Body)
	f.bodies = append(f.bodies, string(body))
	w.Write([]byte("ok " + r.URL.Path))
}

// TestSessionHandlesNoncesAndRenewal: the session mints a token over mTLS,
// retries with the server's nonce when told use_dpop_nonce (resending the
// body), and mints a new token once when the old one is refused.
func TestSessionHandlesNoncesAndRenewal(t *testing.T) {
	id, ca := testIdentity(t)
	f := newFakeMastio(t, ca)
	pool := x509.NewCertPool()
	pool.AddCert(f.srv.Certificate())
	s, err := id.NewSession(f.srv.URL, &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{id.Certificate}, RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(method, body string) string {
		t.Helper()
		req, _ := http.NewRequest(method, f.srv.URL+"/api/x", strings.NewReader(body))
		resp, err := s.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", method, resp.StatusCode, b)
		}
		return string(b)
	}
	if got := get("POST", "payload-1"); got != "ok /api/x" {
		t.Fatal(got)
	}
	if got := get("POST", "payload-2"); got != "ok /api/x" || f.minted != 1 {
		t.Fatalf("%s, %d tokens minted", got, f.minted)
	}
	f.mu.Lock()
	f.revoke = true
	f.mu.Unlock()
	if got := get("POST", "payload-3"); got != "ok /api/x" || f.minted != 2 {
		t.Fatalf("after a refused token: %s, %d tokens minted", got, f.minted)
	}
	if strings.Join(f.bodies, ",") != "payload-1,payload-2,payload-3" {
		t.Fatalf("bodies the server read: %v", f.bodies)
	}
}

func TestSignMessageIsVerifiable(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sig, err := SignMessage(key, []byte("enrollment-status:v1|sid"))
	if err != nil {
		t.Fatal(err)
	}
	der, err := base64.RawURLEncoding.DecodeString(sig)
	sum := sha256.Sum256([]byte("enrollment-status:v1|sid"))
	if err != nil || !ecdsa.VerifyASN1(&key.PublicKey, sum[:], der) {
		t.Fatalf("signature %q does not verify: %v", sig, err)
	}
}
