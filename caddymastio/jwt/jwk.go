// Package jwt holds the JOSE primitives the Mastio needs and nothing more:
// compact JWS parsing, signing and verification for a fixed set of
// asymmetric algorithms, and public JWKs with their RFC 7638 thumbprints.
// It never accepts "none" or a MAC algorithm, and every parser is strict:
// unpadded base64url only, exactly three segments, typed claims.
package jwt

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
)

// JWK is the subset of RFC 7517 members a public key uses.
type jwkJSON struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	// Private and symmetric members, present only to be refused.
	D  *json.RawMessage `json:"d,omitempty"`
	P  *json.RawMessage `json:"p,omitempty"`
	Q  *json.RawMessage `json:"q,omitempty"`
	DP *json.RawMessage `json:"dp,omitempty"`
	DQ *json.RawMessage `json:"dq,omitempty"`
	QI *json.RawMessage `json:"qi,omitempty"`
	K  *json.RawMessage `json:"k,omitempty"`
}

// ErrPrivateJWK is returned for a JWK carrying private or symmetric key
// material.
var ErrPrivateJWK = errors.New("the JWK contains private or symmetric key material")

func b64(s string) ([]byte, error) { return DecodeBase64URL(s) }

// DecodeBase64URL decodes unpadded base64url with one encoding per value:
// Go's decoder, even in Strict mode, skips CR and LF anywhere in the
// input, so "a\nb" would decode as "ab" does; such input is refused.
// Every compact JWS segment and every nonce we issue is read with it.
func DecodeBase64URL(s string) ([]byte, error) {
	if strings.ContainsAny(s, "\r\n") {
		return nil, errors.New("base64url: line breaks are not allowed")
	}
	return base64.RawURLEncoding.Strict().DecodeString(s)
}

// ParseJWK parses a public JWK — EC P-256/P-384, RSA of at least 2048
// bits, or OKP Ed25519 — and returns the key and its RFC 7638 SHA-256
// thumbprint (base64url). Coordinates must have their exact lengths and
// EC points must lie on the curve.
//
// Successful parses are remembered (up to jwkCacheSize distinct JWKs), so
// the DPoP key an agent sends with every proof is parsed and checked once.
func ParseJWK(raw []byte) (crypto.PublicKey, string, error) {
	jwkCache.Lock()
	p, ok := jwkCache.m[string(raw)]
	jwkCache.Unlock()
	if ok {
		return p.key, p.jkt, nil
	}
	key, jkt, err := parseJWK(raw)
	if err != nil {
		return nil, "", err
	}
	jwkCache.Lock()
	if len(jwkCache.m) >= jwkCacheSize {
		jwkCache.m = nil // start over rather than track recency
	}
	if jwkCache.m == nil {
		jwkCache.m = make(map[string]parsedJWK)
	}
	jwkCache.m[string(raw)] = parsedJWK{key, jkt}
	jwkCache.Unlock()
	return key, jkt, nil
}

const jwkCacheSize = 4096

type parsedJWK struct {
	key crypto.PublicKey
	jkt string
}

var jwkCache struct {
	sync.Mutex
	m map[string]parsedJWK
}

func parseJWK(raw []byte) (crypto.PublicKey, string, error) {
	var j jwkJSON
	if err := Decode(raw, &j); err != nil {
		return nil, "", fmt.Errorf("JWK is not a JSON object: %w", err)
	}
	if j.D != nil || j.P != nil || j.Q != nil || j.DP != nil || j.DQ != nil || j.QI != nil || j.K != nil {
		return nil, "", ErrPrivateJWK
	}
	switch j.Kty {
	case "EC":
		var curve elliptic.Curve
		var size int
		switch j.Crv {
		case "P-256":
			curve, size = elliptic.P256(), 32
		case "P-384":
			curve, size = elliptic.P384(), 48
		default:
			return nil, "", fmt.Errorf("unsupported EC curve %q", j.Crv)
		}
		x, err1 := b64(j.X)
		y, err2 := b64(j.Y)
		if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
			return nil, "", fmt.Errorf("EC coordinates must be %d-byte base64url values", size)
		}
		point := append(append([]byte{4}, x...), y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
		if err != nil {
			return nil, "", errors.New("EC point is not on the curve")
		}
		tp := thumbprint(`{"crv":"` + j.Crv + `","kty":"EC","x":"` + j.X + `","y":"` + j.Y + `"}`)
		return pub, tp, nil
	case "RSA":
		n, err1 := b64(j.N)
		e, err2 := b64(j.E)
		if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 || n[0] == 0 || e[0] == 0 {
			return nil, "", errors.New("RSA n and e must be minimal big-endian base64url values")
		}
		pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
		if err := CheckKey(pub); err != nil {
			return nil, "", err
		}
		tp := thumbprint(`{"e":"` + j.E + `","kty":"RSA","n":"` + j.N + `"}`)
		return pub, tp, nil
	case "OKP":
		if j.Crv != "Ed25519" {
			return nil, "", fmt.Errorf("unsupported OKP curve %q", j.Crv)
		}
		x, err := b64(j.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, "", errors.New("Ed25519 x must be a 32-byte base64url value")
		}
		tp := thumbprint(`{"crv":"Ed25519","kty":"OKP","x":"` + j.X + `"}`)
		return ed25519.PublicKey(x), tp, nil
	case "":
		return nil, "", errors.New("JWK has no kty")
	}
	return nil, "", fmt.Errorf("unsupported JWK kty %q", j.Kty)
}

// CheckKey is the one key-type policy of the Mastio, for keys in JWKs,
// PEM and CSRs alike: EC P-256 or P-384, RSA of at least 2048 bits, or
// Ed25519.
func CheckKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("EC curve %s is not supported: use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small: use at least 2048", k.N.BitLen())
		}
		if k.E < 3 || k.E%2 == 0 {
			return errors.New("RSA public exponent is invalid")
		}
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("Ed25519 key has the wrong size")
		}
	default:
		return fmt.Errorf("key type %T is not supported", pub)
	}
	return nil
}

// thumbprint hashes the canonical member string. The members were
// validated as strict base64url, so they need no JSON escaping.
func thumbprint(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// PublicJWK renders a public key as a JWK object with the given kid, alg
// and use (empty members are omitted), and returns its thumbprint.
func PublicJWK(pub crypto.PublicKey, kid, alg, use string) (map[string]string, string, error) {
	m := map[string]string{}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		size := (k.Curve.Params().BitSize + 7) / 8
		raw, err := k.Bytes()
		if err != nil {
			return nil, "", err
		}
		m["kty"], m["crv"] = "EC", k.Curve.Params().Name
		m["x"] = base64.RawURLEncoding.EncodeToString(raw[1 : 1+size])
		m["y"] = base64.RawURLEncoding.EncodeToString(raw[1+size:])
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = base64.RawURLEncoding.EncodeToString(k.N.Bytes())
		m["e"] = base64.RawURLEncoding.EncodeToString(big.NewInt(int64(k.E)).Bytes())
	case ed25519.PublicKey:
		m["kty"], m["crv"], m["x"] = "OKP", "Ed25519", base64.RawURLEncoding.EncodeToString(k)
	default:
		return nil, "", fmt.Errorf("unsupported key type %T", pub)
	}
	raw, _ := json.Marshal(m)
	_, tp, err := ParseJWK(raw)
	if err != nil {
		return nil, "", err
	}
	for k, v := range map[string]string{"kid": kid, "alg": alg, "use": use} {
		if v != "" {
			m[k] = v
		}
	}
	return m, tp, nil
}

// CertThumbprint is the RFC 8705 x5t#S256 of a certificate DER.
func CertThumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
