package e2e

import (
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
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

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
