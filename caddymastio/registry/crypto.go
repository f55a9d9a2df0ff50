package registry

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// Messages signed by an enrolling agent's key (wire format of the
// original Mastio's connector enrollment).
const (
	popPrefix    = "enrollment-pop:v1|"
	statusPrefix = "enrollment-status:v1|"
)

// ParsePublicKeyPEM parses a "PUBLIC KEY" (SPKI) PEM block holding an EC
// P-256/P-384, RSA (>= 2048 bits) or Ed25519 key.
func ParsePublicKeyPEM(s string) (crypto.PublicKey, []byte, error) {
	block, rest := pem.Decode([]byte(s))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, nil, errors.New(`want one PEM block of type "PUBLIC KEY"`)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, nil, errors.New("unexpected data after the PEM block")
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if err := checkKey(pub); err != nil {
		return nil, nil, err
	}
	return pub, block.Bytes, nil
}

func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("EC curve %s is not supported: use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small: use at least 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("key type %T is not supported", pub)
	}
	return nil
}

// ParseCSRPEM parses a CERTIFICATE REQUEST and checks its signature (proof
// that the requester holds the key); only its public key is used.
func ParseCSRPEM(s string) (crypto.PublicKey, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New(`want a PEM block of type "CERTIFICATE REQUEST"`)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr.PublicKey, nil
}

// SPKISHA256 is the lower-case hex SHA-256 of a DER SubjectPublicKeyInfo.
func SPKISHA256(spki []byte) string {
	sum := sha256.Sum256(spki)
	return hex.EncodeToString(sum[:])
}

// decodeB64URL accepts base64url with or without padding.
func decodeB64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(strings.TrimSpace(s), "="))
}

// VerifySignature checks sig (base64url) over msg: ECDSA with SHA-256 in
// ASN.1 DER form, RSA-PSS with MGF1-SHA-256 (any salt length), or Ed25519.
func VerifySignature(pub crypto.PublicKey, msg []byte, sigB64 string) bool {
	sig, err := decodeB64URL(sigB64)
	if err != nil || len(sig) == 0 {
		return false
	}
	digest := sha256.Sum256(msg)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return ecdsa.VerifyASN1(k, digest[:], sig)
	case *rsa.PublicKey:
		return rsa.VerifyPSS(k, crypto.SHA256, digest[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	}
	return false
}

// PoPMessage is what an enrolling agent signs to prove it holds its key.
func PoPMessage(spki []byte) []byte { return []byte(popPrefix + SPKISHA256(spki)) }

// StatusProofMessage is what an agent signs to read its enrollment result.
func StatusProofMessage(sessionID string) []byte { return []byte(statusPrefix + sessionID) }

// JWKThumbprint validates a public JWK and returns its RFC 7638 SHA-256
// thumbprint (base64url). Private keys, symmetric keys and unsupported
// curves are refused.
func JWKThumbprint(raw json.RawMessage) (string, error) {
	var probe map[string]any
	if err := json.Unmarshal(raw, &probe); err != nil {
		return "", errors.New("not a JSON object")
	}
	for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "k"} {
		if _, ok := probe[private]; ok {
			return "", fmt.Errorf("contains the private or symmetric member %q: send the public key only", private)
		}
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(raw); err != nil {
		return "", err
	}
	if !jwk.Valid() || !jwk.IsPublic() {
		return "", errors.New("not a valid public key")
	}
	if err := checkKey(jwk.Key); err != nil {
		return "", err
	}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}
