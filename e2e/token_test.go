package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
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

// attacker holds what a thorough attacker could have: an agent identity,
// the server's signing key and nonce key (read from the data directory),
// and a DPoP key of its own.
type attacker struct {
	t        testing.TB
	s        *server
	id       *client.Identity
	signer   crypto.Signer
	kid      string
	nonceKey []byte
	dkey     *ecdsa.PrivateKey
	djwk     map[string]string
	djkt     string
	issuer   string
}

func newAttacker(t testing.TB, s *server, id *client.Identity) *attacker {
	keys, _ := filepath.Glob(filepath.Join(s.dataDir, "keys", "signing-*.key"))
	if len(keys) != 1 {
		t.Fatalf("signing keys: %v", keys)
	}
	data, _ := os.ReadFile(keys[0])
	signer, err := pki.ParsePrivateKey(data)
	if err != nil {
		t.Fatal(err)
	}
	kid := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(keys[0]), "signing-"), ".key")
	db, _ := sql.Open("sqlite", "file:"+filepath.Join(s.dataDir, "mastio.db")+"?mode=ro")
	defer db.Close()
	var nk string
	db.QueryRow(`SELECT value FROM config WHERE key = 'dpop_nonce_key'`).Scan(&nk)
	nonceKey, _ := base64.RawStdEncoding.DecodeString(nk)
	dk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, jkt, _ := jwt.PublicJWK(dk.Public(), "", "", "")
	return &attacker{t: t, s: s, id: id, signer: signer, kid: kid, nonceKey: nonceKey, dkey: dk, djwk: jwk, djkt: jkt, issuer: "urn:mastio:orga"}
}

// currentNonce is the nonce the server hands out (on every /v1/ answer).
func (a *attacker) currentNonce() string {
	a.t.Helper()
	resp, err := a.s.client().Get(a.s.url("/v1/auth/token"))
	if err != nil {
		a.t.Fatal(err)
	}
	resp.Body.Close()
	n := resp.Header.Get("DPoP-Nonce")
	if n == "" {
		a.t.Fatal("no DPoP-Nonce from the server")
	}
	return n
}

// nonce computes a nonce of a time step under the nonce key alone, as the
// server did before nonces were bound to its replay cache's epoch: such a
// nonce is refused.
func (a *attacker) nonce(at time.Time) string {
	step := at.UnixNano() / int64(5*time.Minute)
	var buf [24]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(step))
	m := hmac.New(sha256.New, a.nonceKey)
	m.Write([]byte("dpop-nonce|"))
	m.Write(buf[:8])
	copy(buf[8:], m.Sum(nil))
	return base64.RawURLEncoding.EncodeToString(buf[:])
}

func (a *attacker) token(mod func(h, c map[string]any)) string {
	now := time.Now().Unix()
	h := map[string]any{"alg": "ES256", "typ": "at+jwt", "kid": a.kid}
	c := map[string]any{"iss": a.issuer, "aud": a.issuer, "sub": "orga::victim", "client_id": "orga::victim", "exp": now + 300, "iat": now,
		"jti": fmt.Sprint(time.Now().UnixNano()), "scope": "mcp:call", "cnf": map[string]string{"jkt": a.djkt}}
	if mod != nil {
		mod(h, c)
	}
	tok, err := jwt.Sign(a.signer, h, c)
	if err != nil {
		a.t.Fatal(err)
	}
	return tok
}

func (a *attacker) proof(key *ecdsa.PrivateKey, tok string, mod func(h, c map[string]any)) string {
	jwk, _, _ := jwt.PublicJWK(key.Public(), "", "", "")
	h := map[string]any{"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
	sum := sha256.Sum256([]byte(tok))
	c := map[string]any{"jti": fmt.Sprint(time.Now().UnixNano()), "htm": "GET", "htu": a.s.url("/api/x"), "iat": time.Now().Unix(),
		"ath": base64.RawURLEncoding.EncodeToString(sum[:]), "nonce": a.currentNonce()}
	if mod != nil {
		mod(h, c)
	}
	p, err := jwt.Sign(key, h, c)
	if err != nil {
		a.t.Fatal(err)
	}
	return p
}

func rawJWS(header, payload string, sig []byte) string {
	e := base64.RawURLEncoding.EncodeToString
	return e([]byte(header)) + "." + e([]byte(payload)) + "." + e(sig)
}

func TestTokenRejections(t *testing.T) {
	s, _ := tokenServer(t)
	victim := makeIdentity(t, s, "victim", "mcp:call")
	other := makeIdentity(t, s, "other", "mcp:call")
	a := newAttacker(t, s, victim)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	foreignSigner, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	valid := a.token(nil)
	replayed := a.proof(a.dkey, valid, nil)
	certBound := a.token(func(h, c map[string]any) {
		c["cnf"] = map[string]string{"jkt": a.djkt, "x5t#S256": jwt.CertThumbprint(victim.Leaf.Raw)}
	})
	hdr := func(tok, proof string) map[string][]string {
		return map[string][]string{"Authorization": {"DPoP " + tok}, "DPoP": {proof}}
	}
	with := func(extra map[string]any) string {
		return a.proof(a.dkey, valid, func(h, c map[string]any) {
			for k, v := range extra {
				if v == nil {
					delete(c, k)
				} else {
					c[k] = v
				}
			}
		})
	}
	withHeader := func(extra map[string]any) string {
		return a.proof(a.dkey, valid, func(h, c map[string]any) {
			for k, v := range extra {
				if v == nil {
					delete(h, k)
				} else {
					h[k] = v
				}
			}
		})
	}
	goodProof := with(nil)
	parts := strings.Split(goodProof, ".")
	otherSig := strings.Split(a.proof(otherKey, valid, nil), ".")[2]
	hsSig := hmac.New(sha256.New, []byte("secret"))
	hsSig.Write([]byte(parts[0] + "." + parts[1]))

	type tc struct {
		name   string
		path   string
		header map[string][]string
		cert   *tls.Certificate
		status int
		code   string // error in WWW-Authenticate and body
		desc   string // in the description
	}
	cases := []tc{
		{"no credentials", "/api/x", nil, nil, 401, "", "access token is required"},
		{"two Authorization headers", "/api/x", map[string][]string{"Authorization": {"DPoP " + valid, "DPoP " + valid}, "DPoP": {goodProof}}, nil, 401, "invalid_token", "exactly one Authorization"},
		{"Basic scheme", "/api/x", map[string][]string{"Authorization": {"Basic dXNlcjpwYXNz"}}, nil, 401, "invalid_token", "DPoP <token>"},
		{"garbage token", "/api/x", hdr("not-a-token", goodProof), nil, 401, "invalid_token", "malformed"},
		{"expired token", "/api/x", hdr(a.token(func(h, c map[string]any) { c["exp"] = time.Now().Unix() - 60 }), goodProof), nil, 401, "invalid_token", "expired"},
		{"token from the future", "/api/x", hdr(a.token(func(h, c map[string]any) { c["iat"] = time.Now().Unix() + 600 }), goodProof), nil, 401, "invalid_token", "future"},
		{"wrong issuer", "/api/x", hdr(a.token(func(h, c map[string]any) { c["iss"] = "https://evil.example" }), goodProof), nil, 401, "invalid_token", "issuer"},
		{"wrong audience", "/api/x", hdr(a.token(func(h, c map[string]any) { c["aud"] = "https://other.example" }), goodProof), nil, 401, "invalid_token", "audience"},
		{"unknown kid", "/api/x", hdr(a.token(func(h, c map[string]any) { h["kid"] = "no-such-key" }), goodProof), nil, 401, "invalid_token", "unknown or retired signing key"},
		{"signed by a foreign key", "/api/x", hdr(func() string {
			tok, _ := jwt.Sign(foreignSigner, map[string]any{"alg": "ES256", "typ": "at+jwt", "kid": a.kid}, map[string]any{"iss": a.issuer, "aud": a.issuer, "sub": "orga::victim", "exp": time.Now().Unix() + 60, "iat": time.Now().Unix(), "cnf": map[string]string{"jkt": a.djkt}})
			return tok
		}(), goodProof), nil, 401, "invalid_token", "signature"},
		{"token alg none", "/api/x", hdr(rawJWS(`{"alg":"none","typ":"at+jwt","kid":"`+a.kid+`"}`, `{"sub":"orga::victim"}`, []byte{0}), goodProof), nil, 401, "invalid_token", "ES256 only"},
		{"token HS256", "/api/x", hdr(rawJWS(`{"alg":"HS256","typ":"at+jwt","kid":"`+a.kid+`"}`, `{"sub":"orga::victim"}`, hsSig.Sum(nil)), goodProof), nil, 401, "invalid_token", "ES256 only"},
		{"bound token as Bearer", "/api/x", map[string][]string{"Authorization": {"Bearer " + valid}}, nil, 401, "invalid_token", "DPoP-bound"},
		{"unbound token as DPoP", "/api/x", hdr(a.token(func(h, c map[string]any) { delete(c, "cnf") }), goodProof), nil, 401, "invalid_token", "not DPoP-bound"},
		{"no DPoP proof", "/api/x", map[string][]string{"Authorization": {"DPoP " + valid}}, nil, 401, "invalid_dpop_proof", "missing"},
		{"two DPoP headers", "/api/x", map[string][]string{"Authorization": {"DPoP " + valid}, "DPoP": {with(nil), with(nil)}}, nil, 401, "invalid_dpop_proof", "exactly one"},
		{"proof typ JWT", "/api/x", hdr(valid, withHeader(map[string]any{"typ": "JWT"})), nil, 401, "invalid_dpop_proof", "typ"},
		{"proof alg none", "/api/x", hdr(valid, rawJWS(`{"typ":"dpop+jwt","alg":"none","jwk":{}}`, `{}`, []byte{0})), nil, 401, "invalid_dpop_proof", "alg none"},
		{"proof HS256", "/api/x", hdr(valid, base64.RawURLEncoding.EncodeToString([]byte(`{"typ":"dpop+jwt","alg":"HS256","jwk":{"kty":"oct","k":"c2VjcmV0"}}`))+"."+parts[1]+"."+base64.RawURLEncoding.EncodeToString(hsSig.Sum(nil))), nil, 401, "invalid_dpop_proof", "MAC"},
		{"proof jwk with d", "/api/x", hdr(valid, withHeader(map[string]any{"jwk": map[string]string{"kty": "EC", "crv": "P-256", "x": a.djwk["x"], "y": a.djwk["y"], "d": "AAAA"}})), nil, 401, "invalid_dpop_proof", "private key"},
		{"proof signed by another key", "/api/x", hdr(valid, parts[0]+"."+parts[1]+"."+otherSig), nil, 401, "invalid_dpop_proof", "signature"},
		{"proof key is not cnf.jkt", "/api/x", hdr(valid, a.proof(otherKey, valid, nil)), nil, 401, "invalid_dpop_proof", "cnf.jkt"},
		{"wrong htm", "/api/x", hdr(valid, with(map[string]any{"htm": "POST"})), nil, 401, "invalid_dpop_proof", "htm"},
		{"wrong htu host", "/api/x", hdr(valid, with(map[string]any{"htu": "https://evil.example/api/x"})), nil, 401, "invalid_dpop_proof", "htu mismatch"},
		{"wrong htu path", "/api/x", hdr(valid, with(map[string]any{"htu": s.url("/api/other")})), nil, 401, "invalid_dpop_proof", "htu mismatch"},
		{"stale iat", "/api/x", hdr(valid, with(map[string]any{"iat": time.Now().Add(-5 * time.Minute).Unix()})), nil, 401, "invalid_dpop_proof", "too old"},
		{"future iat", "/api/x", hdr(valid, with(map[string]any{"iat": time.Now().Add(5 * time.Minute).Unix()})), nil, 401, "invalid_dpop_proof", "future"},
		{"missing ath", "/api/x", hdr(valid, with(map[string]any{"ath": nil})), nil, 401, "invalid_dpop_proof", "ath is required"},
		{"wrong ath", "/api/x", hdr(valid, with(map[string]any{"ath": "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"})), nil, 401, "invalid_dpop_proof", "ath does not match"},
		{"missing nonce", "/api/x", hdr(valid, with(map[string]any{"nonce": nil})), nil, 401, "use_dpop_nonce", "nonce"},
		{"stale nonce", "/api/x", hdr(valid, with(map[string]any{"nonce": a.nonce(time.Now().Add(-15 * time.Minute))})), nil, 401, "use_dpop_nonce", "stale"},
		{"forged nonce", "/api/x", hdr(valid, with(map[string]any{"nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})), nil, 401, "use_dpop_nonce", "stale"},
		{"cert-bound token without the cert", "/api/x", hdr(certBound, a.proof(a.dkey, certBound, nil)), nil, 401, "invalid_token", "client certificate"},
		{"cert-bound token with another agent's cert", "/api/x", hdr(certBound, a.proof(a.dkey, certBound, nil)), &other.Certificate, 401, "invalid_token", "client certificate"},
		{"token of another agent than the cert", "/api/x", hdr(valid, goodProof), &other.Certificate, 401, "invalid_token", "another agent"},
		{"token for an unknown agent", "/api/x", func() map[string][]string {
			t := a.token(func(h, c map[string]any) { c["sub"] = "orga::ghost" })
			return hdr(t, a.proof(a.dkey, t, nil))
		}(), nil, 401, "invalid_token", "revoked"},
	}
	// Replay: the first use passes, the second is refused.
	first := s.do(t, "GET", "/api/x", hdr(valid, replayed), nil, nil)
	if first.StatusCode != 200 {
		t.Fatalf("the first use of a valid proof: %d %v", first.StatusCode, readBody(t, first)["_raw"])
	}
	first.Body.Close()
	cases = append(cases, tc{"replayed proof", "/api/x", hdr(valid, replayed), nil, 401, "invalid_dpop_proof", "already used"})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp := s.do(t, "GET", c.path, c.header, c.cert, nil)
			body := readBody(t, resp)
			www := resp.Header.Get("WWW-Authenticate")
			wantBody := c.code
			if wantBody == "" {
				wantBody = "authentication_required"
			}
			if resp.StatusCode != c.status || body["error"] != wantBody || !strings.Contains(fmt.Sprint(body["error_description"]), c.desc) {
				t.Fatalf("got %d %v", resp.StatusCode, body["_raw"])
			}
			if !strings.HasPrefix(www, "DPoP ") || !strings.Contains(www, `algs="ES256 PS256 EdDSA"`) || !strings.Contains(www, "resource_metadata=") {
				t.Fatalf("WWW-Authenticate %q", www)
			}
			if c.code != "" && !strings.Contains(www, `error="`+c.code+`"`) {
				t.Fatalf("WWW-Authenticate %q lacks error=%q", www, c.code)
			}
			if c.code == "use_dpop_nonce" && (resp.Header.Get("DPoP-Nonce") == "" || !strings.Contains(body["_raw"].(string), "use_dpop_nonce")) {
				t.Fatal("use_dpop_nonce without a DPoP-Nonce header or without the code in the body")
			}
			// The original SDK reads this hint on an htu mismatch.
			if hint := resp.Header.Get("X-Cullis-Hint"); (c.desc == "htu mismatch") != (hint == "htu_mismatch_check_proxy_public_url") {
				t.Fatalf("X-Cullis-Hint %q", hint)
			}
		})
	}

	// Revocation takes effect on the next request, not at token expiry.
	sess := victim.Session()
	if resp, err := sess.HTTPClient().Get(s.url("/api/x")); err != nil || resp.StatusCode != 200 {
		t.Fatalf("before revocation: %v %v", err, resp)
	}
	// valid is a token for the victim that worked above (the replay case).
	if code, _ := s.adminCall(t, "POST", "/registry/agents/orga::victim/revoke", adminSecret, nil); code != 200 {
		t.Fatal(code)
	}
	resp := s.do(t, "GET", "/api/x", hdr(valid, a.proof(a.dkey, valid, nil)), nil, nil)
	if b := readBody(t, resp); resp.StatusCode != 401 || !strings.Contains(fmt.Sprint(b["error_description"]), "revoked") {
		t.Fatalf("revoked agent's token: %d %v", resp.StatusCode, b["_raw"])
	}
	// And the session cannot mint a new token either.
	if resp, err := sess.HTTPClient().Get(s.url("/api/x")); err == nil {
		t.Fatalf("a revoked agent's session still works: %d", resp.StatusCode)
	}

	// Decisions are counted by reason in the metrics.
	_, metrics := s.admin("GET", "/metrics", nil)
	for _, want := range []string{`caddy_mastio_auth_total{reason="bearer_downgrade",result="deny"} 1`,
		`caddy_mastio_auth_total{reason="htu_mismatch",result="deny"} 2`, `caddy_mastio_auth_total{reason="dpop",result="success"}`,
		`caddy_mastio_auth_total{reason="agent_revoked",result="deny"}`, `caddy_mastio_auth_total{reason="use_dpop_nonce",result="deny"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s in:\n%s", want, grepLines(metrics, "caddy_mastio"))
		}
	}

	// The htu mismatch is logged with both values, as the runbook says.
	waitFor(t, "the htu mismatch in the log", 5*time.Second, func() bool {
		return strings.Contains(s.out.String(), `"msg":"dpop htu mismatch","expected_htu":"`+s.url("/api/x")+`"`) &&
			strings.Contains(s.out.String(), "https://evil.example/api/x")
	})
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
