package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// RFC 9449 §4.1 / Figure 2 example proof.
const rfc9449Proof = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"

func TestThumbprintVectors(t *testing.T) {
	cases := []struct{ name, jwk, want string }{
		{"RFC 9449 example EC key", `{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`,
			"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"},
		{"RFC 8037 A.3 Ed25519", `{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`,
			"kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"},
		{"RFC 7638 §3.1 RSA", `{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}`,
			"NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"},
	}
	for _, c := range cases {
		_, tp, err := ParseJWK([]byte(c.jwk))
		if err != nil || tp != c.want {
			t.Errorf("%s: %q %v, want %q", c.name, tp, err, c.want)
		}
		// Cross-check with go-jose.
		var j jose.JSONWebKey
		if err := j.UnmarshalJSON([]byte(c.jwk)); err != nil {
			t.Fatal(err)
		}
		sum, _ := j.Thumbprint(crypto.SHA256)
		if base64.RawURLEncoding.EncodeToString(sum) != c.want {
			t.Errorf("%s: go-jose disagrees", c.name)
		}
	}
}

func TestRFC9449ExampleProofVerifies(t *testing.T) {
	tok, err := Parse(rfc9449Proof)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Typ != "dpop+jwt" || tok.Alg != ES256 {
		t.Fatalf("typ %q alg %q", tok.Typ, tok.Alg)
	}
	key, tp, err := ParseJWK(tok.Header["jwk"])
	if err != nil || tp != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" {
		t.Fatalf("%v %q", err, tp)
	}
	if err := tok.Verify(key, ES256, PS256, EdDSA); err != nil {
		t.Fatalf("RFC example proof: %v", err)
	}
	var claims struct {
		Jti, Htm, Htu string
		Iat           json.RawMessage
	}
	json.Unmarshal(tok.Payload, &claims)
	if iat, err := NumericDate(claims.Iat); err != nil || iat != 1562262616 || claims.Htu != "https://server.example.com/token" {
		t.Fatalf("%+v %v", claims, err)
	}
	// One flipped bit in the signature must fail.
	sig := []byte(rfc9449Proof)
	i := len(sig) - 5
	sig[i] ^= 0x01
	if bad, err := Parse(string(sig)); err == nil {
		if bad.Verify(key, ES256) == nil {
			t.Fatal("tampered signature verified")
		}
	}
}

func signers(t testing.TB) map[string]crypto.Signer {
	ec256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	return map[string]crypto.Signer{ES256: ec256, ES384: ec384, PS256: rsaKey, RS256: rsaKey, EdDSA: ed}
}

func TestInteropWithGoJose(t *testing.T) {
	for alg, key := range signers(t) {
		// ours -> go-jose
		tok, err := Sign(key, map[string]any{"alg": alg, "typ": "JWT"}, map[string]any{"sub": "x"})
		if err != nil {
			t.Fatal(alg, err)
		}
		jws, err := jose.ParseSigned(tok, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
		if err != nil {
			t.Fatal(alg, err)
		}
		if _, err := jws.Verify(key.Public()); err != nil {
			t.Errorf("%s: go-jose rejects our signature: %v", alg, err)
		}
		// go-jose -> ours
		sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key}, nil)
		if err != nil {
			t.Fatal(alg, err)
		}
		obj, _ := sig.Sign([]byte(`{"sub":"y"}`))
		compact, _ := obj.CompactSerialize()
		parsed, err := Parse(compact)
		if err != nil {
			t.Fatal(alg, err)
		}
		if err := parsed.Verify(key.Public(), alg); err != nil {
			t.Errorf("%s: we reject go-jose's signature: %v", alg, err)
		}
		// JWK round trip.
		m, tp, err := PublicJWK(key.Public(), "", "", "")
		if err != nil {
			t.Fatal(alg, err)
		}
		raw, _ := json.Marshal(m)
		j := jose.JSONWebKey{Key: key.Public()}
		want, _ := j.Thumbprint(crypto.SHA256)
		if tp != base64.RawURLEncoding.EncodeToString(want) {
			t.Errorf("%s: thumbprint of %s differs from go-jose's", alg, raw)
		}
	}
}

func TestRefusals(t *testing.T) {
	keys := signers(t)
	good, _ := Sign(keys[ES256], map[string]any{"typ": "JWT"}, map[string]any{"a": 1})
	parts := strings.Split(good, ".")
	hdr := func(h string) string { return base64.RawURLEncoding.EncodeToString([]byte(h)) }
	cases := map[string]string{
		"two segments":      parts[0] + "." + parts[1],
		"four segments":     good + ".x",
		"padded header":     parts[0] + "=." + parts[1] + "." + parts[2],
		"std base64":        parts[0] + "." + parts[1] + ".+/" + parts[2][2:],
		"header not object": hdr(`[1]`) + "." + parts[1] + "." + parts[2],
		"no alg":            hdr(`{"typ":"JWT"}`) + "." + parts[1] + "." + parts[2],
		"crit":              hdr(`{"alg":"ES256","crit":["exp"]}`) + "." + parts[1] + "." + parts[2],
		"empty signature":   parts[0] + "." + parts[1] + ".",
		"huge":              strings.Repeat("a", MaxTokenSize+1),
		// Two readings of one header: refused, not "the last one wins".
		"duplicate alg":      hdr(`{"alg":"ES256","alg":"none"}`) + "." + parts[1] + "." + parts[2],
		"duplicate kid":      hdr(`{"alg":"ES256","kid":"a","kid":"b"}`) + "." + parts[1] + "." + parts[2],
		"escaped duplicate":  hdr(`{"alg":"ES256","\u0061lg":"ES256"}`) + "." + parts[1] + "." + parts[2],
		"invalid utf-8 name": hdr("{\"alg\":\"ES256\",\"\xff\":1}") + "." + parts[1] + "." + parts[2],
	}
	for name, tok := range cases {
		if _, err := Parse(tok); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	tok, _ := Parse(good)
	for _, alg := range []string{"none", "HS256", "RS256"} {
		forged, _ := Parse(hdr(`{"alg":"`+alg+`"}`) + "." + parts[1] + "." + parts[2])
		if forged != nil && forged.Verify(keys[ES256].Public(), ES256, PS256, EdDSA) == nil {
			t.Errorf("alg %s accepted", alg)
		}
	}
	if tok.Verify(keys[EdDSA].Public(), ES256) == nil {
		t.Error("ES256 verified with an Ed25519 key")
	}
	if tok.Verify(keys[ES256].Public(), PS256) == nil {
		t.Error("verified under an algorithm other than the token's")
	}
}

// Claims are read as strictly as headers: a duplicate member is an error,
// not a second reading, and a differently cased name is another name.
func TestDecodeRefusesAmbiguousObjects(t *testing.T) {
	type claims struct {
		Sub string `json:"sub"`
	}
	for _, in := range []string{`{"sub":"a","sub":"b"}`, `{"sub":"a","\u0073ub":"b"}`} {
		var c claims
		if err := Decode([]byte(in), &c); err == nil {
			t.Errorf("%s decoded as %+v", in, c)
		}
	}
	var c claims
	if err := Decode([]byte(`{"SUB":"a"}`), &c); err != nil || c.Sub != "" {
		t.Fatalf(`{"SUB":"a"} read as sub: %v %+v`, err, c)
	}
	if err := Decode([]byte(`{"sub":"a","other":1}`), &c); err != nil || c.Sub != "a" {
		t.Fatalf("a plain object: %v %+v", err, c)
	}
}

func TestJWKRefusals(t *testing.T) {
	for name, jwk := range map[string]string{
		"private EC":    `{"kty":"EC","crv":"P-256","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","d":"AAAA"}`,
		"symmetric":     `{"kty":"oct","k":"c2VjcmV0"}`,
		"off curve":     `{"kty":"EC","crv":"P-256","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"AVE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}`,
		"short x":       `{"kty":"EC","crv":"P-256","x":"AAAA","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA"}`,
		"secp256k1":     `{"kty":"EC","crv":"secp256k1","x":"AAAA","y":"AAAA"}`,
		"small RSA":     `{"kty":"RSA","n":"` + strings.Repeat("A", 170) + `B","e":"AQAB"}`,
		"no kty":        `{"x":"a"}`,
		"X25519":        `{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}`,
		"not json":      `nope`,
		"padded coords": `{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="}`,
	} {
		if _, _, err := ParseJWK([]byte(jwk)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
func TestNumericDateIsAJSONNumber(t *testing.T) {
	for raw, want := range map[string]float64{"1562262616": 1562262616, " 1.5 ": 1.5, "1e3": 1000, "0": 0, "2.5E+2": 250} {
		if got, err := NumericDate(json.RawMessage(raw)); err != nil || got != want {
			t.Errorf("NumericDate(%s) = %v, %v; want %v", raw, got, err, want)
		}
	}
	for _, raw := range []string{`"1562262616"`, "-1", "01", "1.", ".5", "1e", "1e+", "+1", "true", "null", "", "1 2", "0x10", "1e12", "NaN", "[1]"} {
		if got, err := NumericDate(json.RawMessage(raw)); err == nil {
			t.Errorf("NumericDate(%s) = %v, want an error", raw, got)
		}
	}
}

// The JWK cache gives the same key and thumbprint as a fresh parse, never
// remembers a refusal, and stays bounded.
func TestJWKCache(t *testing.T) {
	raw := []byte(`{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`)
	k1, t1, err1 := ParseJWK(raw)
	k2, t2, err2 := ParseJWK(raw)
	if err1 != nil || err2 != nil || t1 != t2 || t1 != "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" || !k1.(*ecdsa.PublicKey).Equal(k2) {
		t.Fatalf("cached parse differs: %v %v %s %s", err1, err2, t1, t2)
	}
	offCurve := []byte(`{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDB","crv":"P-256"}`)
	for i := 0; i < 2; i++ {
		if _, _, err := ParseJWK(offCurve); err == nil {
			t.Fatalf("call %d: a point off the curve was accepted", i+1)
		}
	}
	for i := 0; i < jwkCacheSize+10; i++ {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		j, _, _ := PublicJWK(k.Public(), "", "", "")
		b, _ := json.Marshal(j)
		if _, _, err := ParseJWK(b); err != nil {
			t.Fatal(err)
		}
	}
	jwkCache.Lock()
	n := len(jwkCache.m)
	jwkCache.Unlock()
	if n > jwkCacheSize {
		t.Fatalf("JWK cache holds %d entries", n)
	}
}
