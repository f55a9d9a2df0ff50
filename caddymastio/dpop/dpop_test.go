package dpop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

const rfc9449Proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"

func TestRFC9449ExampleProof(t *testing.T) {
	now := time.Unix(1562262616, 0).Add(5 * time.Second)
	p, err := Verify(context.Background(), []string{rfc9449Proof}, Checks{Method: "POST", URL: "https://server.example.com/token",
		Now: now, Replay: startedCache(100)})
	if err != nil {
		t.Fatal(err)
	}
	if p.JKT != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" || p.JTI != "-BwC3ESc6acc2lTc" {
		t.Fatalf("%+v", p)
	}
	// The same proof once more is a replay (the cache runs on the same
	// injected clock as the check).
	cache := startedCache(100)
	cache.now = func() time.Time { return now }
	c := Checks{Method: "POST", URL: "https://server.example.com/token", Now: now, Replay: cache}
	Verify(context.Background(), []string{rfc9449Proof}, c)
	if _, err := Verify(context.Background(), []string{rfc9449Proof}, c); err == nil || !strings.Contains(err.Description, "replayed") {
		t.Fatalf("replay: %v", err)
	}
}

// rfc9449ResourceProof is RFC 9449's example proof for a protected
// resource request (Figure 13), bound to the example access token by ath.
const rfc9449ResourceProof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19" +
	".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9" +
	".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"

// TestRFC9449ATH verifies RFC 9449's resource proof with its access
// token: the ath check accepts exactly the token the proof was made for.
func TestRFC9449ATH(t *testing.T) {
	const token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"
	checks := func(tok string) Checks {
		return Checks{Method: "GET", URL: "https://resource.example.org/protectedresource", AccessToken: tok,
			Now: time.Unix(1562262618, 0).Add(time.Second), Replay: startedCache(10)}
	}
	p, err := Verify(context.Background(), []string{rfc9449ResourceProof}, checks(token))
	if err != nil {
		t.Fatal(err)
	}
	if p.ATH != "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo" || p.JKT != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" || p.JTI != "e1j3V_bKic8-LAEB" {
		t.Fatalf("%+v", p)
	}
	if _, err := Verify(context.Background(), []string{rfc9449ResourceProof}, checks(token+"x")); err == nil || !strings.Contains(err.Description, "ath does not match") {
		t.Fatalf("another token: %v", err)
	}
	if _, err := Verify(context.Background(), []string{rfc9449ResourceProof}, checks("")); err == nil || !strings.Contains(err.Description, "ath is only allowed") {
		t.Fatalf("no token: %v", err)
	}
}

// client makes proofs.
type client struct {
	key crypto.Signer
	alg string
	jwk map[string]string
	jkt string
}

func newClient(t testing.TB, key crypto.Signer) *client {
	alg, err := jwt.AlgFor(key)
	if err != nil {
		t.Fatal(err)
	}
	m, tp, err := jwt.PublicJWK(key.Public(), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	return &client{key, alg, m, tp}
}

func (c *client) proof(t testing.TB, header map[string]any, claims map[string]any) string {
	h := map[string]any{"typ": "dpop+jwt", "alg": c.alg, "jwk": c.jwk}
	for k, v := range header {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	cl := map[string]any{"jti": fmt.Sprint(time.Now().UnixNano()), "htm": "GET", "htu": "https://mastio.example:9443/mcp", "iat": time.Now().Unix()}
	for k, v := range claims {
		if v == nil {
			delete(cl, k)
		} else {
			cl[k] = v
		}
	}
	s, err := jwt.Sign(c.key, h, cl)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ath(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return base64.RawURLEncoding.EncodeToString(s[:])
}

func TestVerifyRefusals(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, o := newClient(t, ec), newClient(t, other)
	nonces := NewNonces([]byte("0123456789abcdef0123456789abcdef"), time.Minute, []byte("epoch"))
	now := time.Now()
	nonce := nonces.Current(now)
	oldNonce := nonces.Current(now.Add(-3 * time.Minute))
	token := "the.access.token"
	base := Checks{Method: "GET", URL: "https://Mastio.Example:9443/mcp?x=1", AccessToken: token, Nonces: nonces, NonceMode: NonceRequired}
	good := map[string]any{"ath": ath(token), "nonce": nonce}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	forgedHeader := func(h string) string {
		p := strings.Split(c.proof(t, nil, good), ".")
		return base64.RawURLEncoding.EncodeToString([]byte(h)) + "." + p[1] + "." + p[2]
	}
	otherSig := func() string {
		p := strings.Split(c.proof(t, nil, good), ".")
		q := strings.Split(o.proof(t, map[string]any{"jwk": c.jwk}, good), ".")
		return p[0] + "." + p[1] + "." + q[2]
	}()
	cases := []struct {
		name, proof, want string
		code              string
		values            []string
	}{
		{"good", c.proof(t, nil, good), "", "", nil},
		{"missing", "", "missing", CodeInvalidProof, []string{}},
		{"two headers", "", "exactly one", CodeInvalidProof, []string{c.proof(t, nil, good), c.proof(t, nil, good)}},
		{"comma joined", c.proof(t, nil, good) + "," + c.proof(t, nil, good), "exactly one", CodeInvalidProof, nil},
		{"not a jwt", "hello", "malformed", CodeInvalidProof, nil},
		{"typ JWT", c.proof(t, map[string]any{"typ": "JWT"}, good), "typ must be dpop+jwt", CodeInvalidProof, nil},
		{"no typ", c.proof(t, map[string]any{"typ": nil}, good), "typ must be dpop+jwt", CodeInvalidProof, nil},
		{"alg none", forgedHeader(`{"typ":"dpop+jwt","alg":"none","jwk":{}}`), "alg none", CodeInvalidProof, nil},
		{"alg HS256", forgedHeader(`{"typ":"dpop+jwt","alg":"HS256","jwk":{"kty":"oct","k":"c2VjcmV0"}}`), "MAC", CodeInvalidProof, nil},
		{"alg RS256", forgedHeader(`{"typ":"dpop+jwt","alg":"RS256","jwk":{}}`), "not accepted", CodeInvalidProof, nil},
		{"no jwk", c.proof(t, map[string]any{"jwk": nil}, good), "no jwk", CodeInvalidProof, nil},
		{"jwk with d", c.proof(t, map[string]any{"jwk": map[string]string{"kty": "EC", "crv": "P-256", "x": c.jwk["x"], "y": c.jwk["y"], "d": "AAAA"}}, good), "private key", CodeInvalidProof, nil},
		{"x5c header", c.proof(t, map[string]any{"x5c": []string{"AAAA"}}, good), "jwk only", CodeInvalidProof, nil},
		{"signed by another key", otherSig, "signature", CodeInvalidProof, nil},
		{"wrong htm", c.proof(t, nil, with(map[string]any{"htm": "POST"})), "htm", CodeInvalidProof, nil},
		{"wrong htu host", c.proof(t, nil, with(map[string]any{"htu": "https://evil.example:9443/mcp"})), "htu mismatch", CodeInvalidProof, nil},
		{"wrong htu path", c.proof(t, nil, with(map[string]any{"htu": "https://mastio.example:9443/other"})), "htu mismatch", CodeInvalidProof, nil},
		{"wrong htu port", c.proof(t, nil, with(map[string]any{"htu": "https://mastio.example/mcp"})), "htu mismatch", CodeInvalidProof, nil},
		{"stale iat", c.proof(t, nil, with(map[string]any{"iat": now.Add(-2 * time.Minute).Unix()})), "too old", CodeInvalidProof, nil},
		{"future iat", c.proof(t, nil, with(map[string]any{"iat": now.Add(time.Minute).Unix()})), "future", CodeInvalidProof, nil},
		{"iat string", c.proof(t, nil, with(map[string]any{"iat": "now"})), "iat", CodeInvalidProof, nil},
		{"no jti", c.proof(t, nil, with(map[string]any{"jti": nil})), "jti", CodeInvalidProof, nil},
		{"no ath", c.proof(t, nil, with(map[string]any{"ath": nil})), "ath is required", CodeInvalidProof, nil},
		{"wrong ath", c.proof(t, nil, with(map[string]any{"ath": ath("another.token.x")})), "ath does not match", CodeInvalidProof, nil},
		{"no nonce", c.proof(t, nil, with(map[string]any{"nonce": nil})), "nonce", CodeUseNonce, nil},
		{"stale nonce", c.proof(t, nil, with(map[string]any{"nonce": oldNonce})), "stale", CodeUseNonce, nil},
		{"forged nonce", c.proof(t, nil, with(map[string]any{"nonce": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})), "stale", CodeUseNonce, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vals := tc.values
			if vals == nil {
				vals = []string{tc.proof}
			}
			ch := base
			ch.Replay = startedCache(100)
			p, err := Verify(context.Background(), vals, ch)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("good proof refused: %v", err)
				}
				if p.JKT != c.jkt {
					t.Fatal("jkt")
				}
				return
			}
			if err == nil || err.Code != tc.code || !strings.Contains(err.Description, tc.want) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.want)
			}
		})
	}
}

func TestAllAlgorithms(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	for _, k := range []crypto.Signer{rsaKey, ed} {
		c := newClient(t, k)
		p, err := Verify(context.Background(), []string{c.proof(t, nil, nil)}, Checks{Method: "GET", URL: "https://mastio.example:9443/mcp"})
		if err != nil || p.JKT != c.jkt {
			t.Fatalf("%s: %v", c.alg, err)
		}
	}
}

func TestNormalizeHTU(t *testing.T) {
	same := [][2]string{
		{"https://Mastio.Example:443/a", "https://mastio.example/a"},
		{"HTTPS://mastio.example/a?q=1#f", "https://mastio.example/a"},
		{"https://mastio.example", "https://mastio.example/"},
		{"https://mastio.example/a/./b/../c", "https://mastio.example/a/c"},
		{"https://mastio.example/%7euser", "https://mastio.example/~user"},
		{"https://mastio.example/a%2fb", "https://mastio.example/a%2Fb"},
		{"wss://mastio.example/ws", "https://mastio.example/ws"},
		{"http://[::1]:80/x", "http://[::1]/x"},
	}
	for _, p := range same {
		a, err1 := NormalizeHTU(p[0])
		b, err2 := NormalizeHTU(p[1])
		if err1 != nil || err2 != nil || a != b {
			t.Errorf("%q (%q) != %q (%q) %v %v", p[0], a, p[1], b, err1, err2)
		}
	}
	for _, bad := range []string{"/relative", "ftp://x/y", "https://user@x/y", "mailto:x@y"} {
		if _, err := NormalizeHTU(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	a, _ := NormalizeHTU("https://mastio.example:9443/a")
	b, _ := NormalizeHTU("https://mastio.example/a")
	if a == b {
		t.Error("non-default port dropped")
	}
}

func TestNoncesAcrossInstancesAndSteps(t *testing.T) {
	key := []byte("a shared deployment key of 32+ bytes")
	a, b := NewNonces(key, time.Minute, []byte("e")), NewNonces(key, time.Minute, []byte("e"))
	now := time.Now()
	n := a.Current(now)
	if !b.Valid(n, now) || !b.Valid(n, now.Add(time.Minute)) {
		t.Fatal("a nonce from one instance is not valid on another, or not for the next step")
	}
	if b.Valid(n, now.Add(3*time.Minute)) {
		t.Fatal("nonce valid after two steps")
	}
	if NewNonces([]byte("a different key of 32 bytes....."), time.Minute, []byte("e")).Valid(n, now) {
		t.Fatal("nonce valid under another key")
	}
	for _, c := range n {
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			t.Fatalf("nonce %q is not NQCHAR", n)
		}
	}
}

func TestReplayCacheExpiresAndBoundsMemory(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := NewMemoryCache(1 << 20)
	c.now = func() time.Time { return now }
	ctx := context.Background()
	if ok, _ := c.Use(ctx, "a", now.Add(time.Minute)); !ok {
		t.Fatal("first use refused")
	}
	if ok, _ := c.Use(ctx, "a", now.Add(time.Minute)); ok {
		t.Fatal("second use accepted")
	}
	now = now.Add(61 * time.Second)
	if ok, _ := c.Use(ctx, "a", now.Add(time.Minute)); !ok {
		t.Fatal("expired entry still blocks")
	}

	// One million distinct proofs at 2,000 a second, each kept 70 s: at
	// most ~140,000 are live at once, and the heap stays bounded.
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < 1_000_000; i++ {
		if i%2000 == 0 {
			now = now.Add(time.Second)
		}
		if ok, err := c.Use(ctx, fmt.Sprintf("jkt|%d", i), now.Add(70*time.Second)); !ok || err != nil {
			t.Fatalf("insert %d: %v %v", i, ok, err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	live := c.Len()
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("after 1M inserts: %d entries held, heap grew %.1f MiB", live, float64(grown)/(1<<20))
	if live > 150_000 {
		t.Fatalf("%d entries held, want at most ~142,000 (70 s x 2,000/s)", live)
	}
	if grown > 32<<20 {
		t.Fatalf("heap grew %d bytes, bound is 32 MiB", grown)
	}
}

func TestReplayCacheFailsClosedWhenFull(t *testing.T) {
	c := NewMemoryCache(160)
	now := time.Now()
	full := false
	for i := 0; i < 1000; i++ {
		if _, err := c.Use(context.Background(), fmt.Sprint(i), now.Add(time.Hour)); err == ErrCacheFull {
			full = true
			break
		}
	}
	if !full {
		t.Fatal("the cache accepted more live entries than its capacity")
	}
}

// FuzzParse feeds arbitrary text to the proof parser: it must never panic
// and must refuse anything it cannot verify.
func FuzzParse(f *testing.F) {
	f.Add(rfc9449Proof)
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add(strings.Replace(rfc9449Proof, "ES256", "HS256", 1))
	f.Add("eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7fX0.e30.AAAA")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err == nil && p.JKT == "" {
			t.Fatal("accepted a proof without a key")
		}
	})
}

func BenchmarkVerifyProof(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c := newClient(b, k)
	proofs := make([]string, b.N)
	for i := range proofs {
		proofs[i] = c.proof(b, nil, map[string]any{"jti": fmt.Sprint(i), "ath": ath("tok")})
	}
	ch := Checks{Method: "GET", URL: "https://mastio.example:9443/mcp", AccessToken: "tok", Replay: startedCache(0)}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Verify(context.Background(), []string{proofs[i]}, ch); err != nil {
			b.Fatal(err)
		}
	}
}

// startedCache is a replay cache that began long ago: the proofs of a
// test are all signed after it started.
func startedCache(capacity int) *MemoryCache {
	c := NewMemoryCache(capacity)
	c.since = time.Time{}
	return c
}

// TestReplayProtectionSurvivesARestart: a new replay cache (a restarted
// process) has forgotten the proofs the old one saw, so it refuses every
// proof it cannot vouch for — nonces of the old epoch, and proofs without
// a nonce signed before it began (counting the allowed clock skew) — and
// the client is told to sign a new one.
func TestReplayProtectionSurvivesARestart(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c := newClient(t, ec)
	key := []byte("0123456789abcdef0123456789abcdef")
	before := NewMemoryCache(100)
	before.since = time.Now().Add(-time.Hour)
	oldNonces := NewNonces(key, time.Minute, before.Epoch())
	proof := c.proof(t, nil, map[string]any{"nonce": oldNonces.Current(time.Now())})
	checks := Checks{Method: "GET", URL: "https://mastio.example:9443/mcp", Nonces: oldNonces, NonceMode: NonceRequired, Replay: before}
	if _, err := Verify(context.Background(), []string{proof}, checks); err != nil {
		t.Fatal(err)
	}

	after := NewMemoryCache(100) // the restarted process
	if string(after.Epoch()) == string(before.Epoch()) {
		t.Fatal("two caches share an epoch")
	}
	newNonces := NewNonces(key, time.Minute, after.Epoch())
	checks.Nonces, checks.Replay = newNonces, after
	if _, err := Verify(context.Background(), []string{proof}, checks); err == nil || err.Code != CodeUseNonce {
		t.Fatalf("a proof with a nonce from before the restart: %v", err)
	}
	fresh := c.proof(t, nil, map[string]any{"nonce": newNonces.Current(time.Now())})
	if _, err := Verify(context.Background(), []string{fresh}, checks); err != nil {
		t.Fatalf("a fresh proof after the restart: %v", err)
	}

	// Without nonces, only the iat can tell: a proof signed before the
	// restart (or within the clock skew after it) is refused.
	noNonce := c.proof(t, nil, nil)
	for mode, code := range map[NonceMode]string{NonceOff: CodeInvalidProof, NonceOptional: CodeUseNonce} {
		ch := Checks{Method: "GET", URL: "https://mastio.example:9443/mcp", Nonces: newNonces, NonceMode: mode, Replay: NewMemoryCache(10)}
		if _, err := Verify(context.Background(), []string{noNonce}, ch); err == nil || err.Code != code {
			t.Fatalf("mode %d: a nonce-less proof from before the cache began: %v", mode, err)
		}
		ch.Now = time.Now().Add(DefaultMaxSkew + time.Second)
		later := c.proof(t, nil, map[string]any{"iat": ch.Now.Unix()})
		if _, err := Verify(context.Background(), []string{later}, ch); err != nil {
			t.Fatalf("mode %d: a nonce-less proof signed after the cache began: %v", mode, err)
		}
	}
}

// TestFutureIATSkew: a proof from a clock running ahead is accepted up to
// the skew (5s by default, the original Mastio's), refused beyond.
func TestFutureIATSkew(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c := newClient(t, ec)
	now := time.Now()
	check := func(ahead, skew time.Duration) *Error {
		p := c.proof(t, nil, map[string]any{"iat": now.Add(ahead).Unix()})
		_, err := Verify(context.Background(), []string{p}, Checks{Method: "GET", URL: "https://mastio.example:9443/mcp", Now: now,
			MaxSkew: skew, Replay: startedCache(10)})
		return err
	}
	if err := check(4*time.Second, 0); err != nil {
		t.Fatalf("4s ahead, default skew: %v", err)
	}
	if err := check(7*time.Second, 0); err == nil || !strings.Contains(err.Description, "future") {
		t.Fatalf("7s ahead, default skew: %v", err)
	}
	if err := check(7*time.Second, 10*time.Second); err != nil {
		t.Fatalf("7s ahead, skew 10s: %v", err)
	}
}

// TestNonceHasOneEncoding: a nonce with a line break in it decodes, in Go's
// base64, to the same bytes as the nonce; it is refused all the same.
func TestNonceHasOneEncoding(t *testing.T) {
	n := NewNonces(make([]byte, 32), time.Minute, nil)
	now := time.Now()
	cur := n.Current(now)
	if !n.Valid(cur, now) {
		t.Fatal("the current nonce is refused")
	}
	for _, v := range []string{cur[:5] + "\n" + cur[5:], cur + "\r\n", "\r" + cur} {
		if n.Valid(v, now) {
			t.Errorf("%q accepted as the nonce %q", v, cur)
		}
	}
}
