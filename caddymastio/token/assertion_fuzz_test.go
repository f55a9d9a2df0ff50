package token

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// FuzzVerifyAssertion checks the client assertion verifier: the only
// assertion it accepts is the one the agent signed, byte for byte — no
// change to the header, the claims, the chain or the signature, and no
// other encoding of them, gets through.
func FuzzVerifyAssertion(f *testing.F) {
	ca, _, err := pki.LoadOrCreate(pki.Config{Dir: f.TempDir(), Org: "orga"})
	if err != nil {
		f.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cert, err := ca.IssueAgent(pki.AgentCert{PublicKey: key.Public(), Identity: pki.AgentIdentity{TrustDomain: "mastio.local", Org: "orga", Name: "a"}})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	x5c := []string{base64.StdEncoding.EncodeToString(cert.Raw), base64.StdEncoding.EncodeToString(ca.Intermediate().Raw)}
	signed, err := jwt.Sign(key, map[string]any{"alg": "ES256", "typ": "JWT", "x5c": x5c},
		map[string]any{"sub": "orga::a", "iss": "orga::a", "aud": "mastio", "iat": now.Unix(), "exp": now.Unix() + 300, "jti": "j1"})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	checks := AssertionChecks{Roots: ca.RootPool(), Audiences: []string{"mastio"}, Now: now}
	if _, err := VerifyAssertion(signed, checks); err != nil {
		f.Fatalf("the signed assertion does not verify: %v", err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if _, err := VerifyAssertion(raw, checks); err == nil && raw != signed {
			t.Fatalf("accepted an assertion the agent did not sign: %q", raw)
		}
	})
}
