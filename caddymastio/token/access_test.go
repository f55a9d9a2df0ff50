package token

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/internal/testdb"
)

func newRing(t testing.TB) (*KeyRing, *audit.Log, *sql.DB) {
	t.Helper()
	dir := t.TempDir()
	st, raw := testdb.OpenSQLite(t)
	log := audit.Open(st, audit.Options{})
	t.Cleanup(func() { log.Close() })
	ring, _, err := OpenKeyRing(context.Background(), st, log, pki.FileKeyStore{Dir: filepath.Join(dir, "keys")})
	if err != nil {
		t.Fatal(err)
	}
	return ring, log, raw
}

func claims() Claims {
	now := time.Now().Unix()
	return Claims{Issuer: "urn:mastio:acme", Subject: "acme::bot", Audience: "urn:mastio:acme", Expiry: now + 300,
		IssuedAt: now, ClientID: "acme::bot", Scope: "mcp:call", Cnf: &Confirmation{JKT: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}
}

var expect = Expect{Issuer: "urn:mastio:acme", Audience: "urn:mastio:acme", Leeway: 5 * time.Second}

func TestMintAndVerify(t *testing.T) {
	ring, _, _ := newRing(t)
	v := NewVerifier(ring, 10)
	tok, err := ring.Mint(claims())
	if err != nil {
		t.Fatal(err)
	}
	parsed, _ := jwt.Parse(tok)
	if parsed.Typ != "at+jwt" || parsed.Alg != "ES256" || parsed.Kid != ring.Active().Kid {
		t.Fatalf("header %+v", parsed.Header)
	}
	c, verr := v.Verify(tok, expect)
	if verr != nil || c.Cnf.JKT == "" || c.ID == "" || c.Subject != "acme::bot" {
		t.Fatalf("%+v %v", c, verr)
	}
	// Cached: the second verification is the same answer.
	if c2, verr := v.Verify(tok, expect); verr != nil || c2 != c {
		t.Fatal("not served from the cache")
	}
}

func TestVerifyRefusals(t *testing.T) {
	ring, _, _ := newRing(t)
	other, _, _ := newRing(t)
	v := NewVerifier(ring, 10)
	mint := func(mod func(*Claims)) string {
		c := claims()
		mod(&c)
		tok, _ := ring.Mint(c)
		return tok
	}
	good := mint(func(*Claims) {})
	parts := strings.Split(good, ".")
	foreign, _ := other.Mint(claims())
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	cases := map[string]struct{ tok, want string }{
		"expired":        {mint(func(c *Claims) { c.Expiry = time.Now().Unix() - 60 }), "expired"},
		"future iat":     {mint(func(c *Claims) { c.IssuedAt = time.Now().Unix() + 600 }), "future"},
		"wrong issuer":   {mint(func(c *Claims) { c.Issuer = "urn:mastio:other" }), "issuer"},
		"wrong audience": {mint(func(c *Claims) { c.Audience = "https://elsewhere" }), "audience"},
		"no exp":         {mint(func(c *Claims) { c.Expiry = 0 }), "no exp"},
		"no sub":         {mint(func(c *Claims) { c.Subject = "" }), "no sub"},
		"foreign key":    {foreign, "unknown or retired signing key"},
		"tampered":       {parts[0] + "." + enc(`{"iss":"urn:mastio:acme","sub":"acme::admin","aud":"urn:mastio:acme","exp":9999999999}`) + "." + parts[2], "signature"},
		"alg none":       {enc(`{"alg":"none","typ":"at+jwt","kid":"x"}`) + "." + parts[1] + ".AA", "ES256 only"},
		"HS256":          {enc(`{"alg":"HS256","typ":"at+jwt","kid":"`+ring.Active().Kid+`"}`) + "." + parts[1] + "." + parts[2], "ES256 only"},
		"wrong typ":      {enc(`{"alg":"ES256","typ":"JWT","kid":"`+ring.Active().Kid+`"}`) + "." + parts[1] + "." + parts[2], "not an access token"},
		"garbage":        {"not-a-token", "malformed"},
	}
	for name, c := range cases {
		if _, err := v.Verify(c.tok, expect); err == nil || !strings.Contains(err.Description, c.want) {
			t.Errorf("%s: got %v, want %q", name, err, c.want)
		}
	}
}

func TestRotationKeepsOldTokensUntilGraceEnds(t *testing.T) {
	ring, log, st := newRing(t)
	v := NewVerifier(ring, 10)
	old := ring.Active().Kid
	before, _ := ring.Mint(claims())
	if _, err := v.Verify(before, expect); err != nil {
		t.Fatal(err)
	}
	rot, err := ring.Rotate(context.Background(), time.Hour, "admin", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rot.OldKid != old || rot.NewKid == old || ring.Active().Kid != rot.NewKid {
		t.Fatalf("%+v", rot)
	}
	after, _ := ring.Mint(claims())
	p, _ := jwt.Parse(after)
	if p.Kid != rot.NewKid {
		t.Fatal("new tokens not signed with the new key")
	}
	for _, tok := range []string{before, after} {
		if _, err := v.Verify(tok, expect); err != nil {
			t.Fatalf("during grace: %v", err)
		}
	}
	var jwks struct {
		Keys []map[string]string `json:"keys"`
	}
	body, etag := ring.JWKS()
	json.Unmarshal(body, &jwks)
	if len(jwks.Keys) != 2 || etag == "" {
		t.Fatalf("JWKS during grace: %s", body)
	}
	for _, k := range jwks.Keys {
		if k["d"] != "" || k["kid"] == "" || k["alg"] != "ES256" || k["use"] != "sig" {
			t.Fatalf("JWKS entry %v", k)
		}
	}
	// After the grace period the old key no longer verifies, cached or not.
	late := expect
	late.Now = time.Now().Add(2 * time.Hour)
	c := claims()
	c.Expiry = late.Now.Unix() + 60
	if _, err := v.Verify(before, late); err == nil {
		t.Fatal("old-key token verified after the grace period")
	}
	var rows int
	st.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'token.signing_key_rotated'`).Scan(&rows)
	if rows != 1 {
		t.Fatal("rotation not audited")
	}
	// A restart sees the same ring.
	again, _, err := OpenKeyRing(context.Background(), ring.st, log, ring.keys)
	if err != nil || again.Active().Kid != rot.NewKid || len(again.Keys()) != 2 {
		t.Fatalf("reopened ring: %v", err)
	}
}

func FuzzParseToken(f *testing.F) {
	ring, _, _ := newRing(f)
	good, _ := ring.Mint(claims())
	f.Add(good)
	f.Add("a.b.c")
	f.Add("eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.e30.")
	f.Fuzz(func(t *testing.T, s string) {
		Parse(s) // must not panic
	})
}

func BenchmarkVerifyTokenSignature(b *testing.B) {
	ring, _, _ := newRing(b)
	tok, _ := ring.Mint(claims())
	v := NewVerifier(ring, 1)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		v.cache = map[[32]byte]cached{} // cold every time
		if _, err := v.Verify(tok, expect); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyTokenCached(b *testing.B) {
	ring, _, _ := newRing(b)
	tok, _ := ring.Mint(claims())
	v := NewVerifier(ring, 10)
	v.Verify(tok, expect)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := v.Verify(tok, expect); err != nil {
			b.Fatal(err)
		}
	}
}
