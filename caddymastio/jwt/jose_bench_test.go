package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// BenchmarkProofVerify is the measurement behind keeping this package as
// the Mastio's one JOSE path instead of go-jose (kept as the reference
// the tests cross-check against): the work done for every DPoP proof —
// parse the compact JWS, take the public JWK from its header (a new key
// each time, so no cache helps either side), verify the ES256 signature,
// decode the claims. Results on this machine are in the README.
func BenchmarkProofVerify(b *testing.B) {
	const n = 256
	proofs := make([]string, n)
	for i := range proofs {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		jwk, _, _ := PublicJWK(k.Public(), "", "", "")
		p, err := Sign(k, map[string]any{"typ": "dpop+jwt", "jwk": jwk}, map[string]any{"jti": fmt.Sprint(i), "htm": "POST",
			"htu": "https://mastio.example.com/v1/mcp", "iat": time.Now().Unix(), "ath": "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"})
		if err != nil {
			b.Fatal(err)
		}
		proofs[i] = p
	}
	type claims struct {
		JTI string `json:"jti"`
		HTM string `json:"htm"`
		HTU string `json:"htu"`
		IAT int64  `json:"iat"`
		ATH string `json:"ath"`
	}
	b.Run("ours", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			tok, err := Parse(proofs[i%n])
			if err != nil {
				b.Fatal(err)
			}
			key, _, err := parseJWK(tok.Header["jwk"]) // uncached: a new key every time
			if err != nil {
				b.Fatal(err)
			}
			if err := tok.Verify(key, ES256); err != nil {
				b.Fatal(err)
			}
			var c claims
			if err := json.Unmarshal(tok.Payload, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("go-jose", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			sig, err := jose.ParseSigned(proofs[i%n], []jose.SignatureAlgorithm{jose.ES256})
			if err != nil {
				b.Fatal(err)
			}
			jwk := sig.Signatures[0].Header.JSONWebKey
			if jwk == nil || !jwk.Valid() {
				b.Fatal("no jwk")
			}
			payload, err := sig.Verify(jwk)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := jwk.Thumbprint(crypto.SHA256); err != nil { // the jkt every proof needs
				b.Fatal(err)
			}
			var c claims
			if err := json.Unmarshal(payload, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
}
