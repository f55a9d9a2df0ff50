package registry

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
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

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
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
	if err := jwt.CheckKey(pub); err != nil {
		return nil, nil, err
	}
	return pub, block.Bytes, nil
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
	if err := jwt.CheckKey(csr.PublicKey); err != nil {
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

// JWKThumbprint validates a public JWK (the key types of jwt.CheckKey)
// and returns its RFC 7638 SHA-256 thumbprint (base64url). Private keys,
// symmetric keys and unsupported curves are refused.
func JWKThumbprint(raw json.RawMessage) (string, error) {
	_, jkt, err := jwt.ParseJWK(raw)
	return jkt, err
}
