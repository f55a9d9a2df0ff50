package jwt

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	jsonv2 "github.com/go-json-experiment/json"
)

// Algorithms this package implements. MAC algorithms and "none" are not
// among them and cannot be accepted.
const (
	ES256 = "ES256"
	ES384 = "ES384"
	PS256 = "PS256"
	RS256 = "RS256"
	EdDSA = "EdDSA"
)

// MaxTokenSize bounds what Parse reads, so hostile input costs little.
const MaxTokenSize = 16 << 10

// Token is a parsed, not yet verified, compact JWS.
type Token struct {
	Raw          string
	SigningInput string
	Signature    []byte
	// Header holds the protected header members.
	Header map[string]json.RawMessage
	// Payload is the decoded payload.
	Payload []byte
	Alg     string
	Typ     string
	Kid     string
}

// Parse splits and decodes a compact JWS. It checks the syntax only.
func Parse(s string) (*Token, error) {
	if len(s) > MaxTokenSize {
		return nil, fmt.Errorf("token longer than %d bytes", MaxTokenSize)
	}
	first := strings.IndexByte(s, '.')
	last := strings.LastIndexByte(s, '.')
	if first <= 0 || last == first || last == len(s)-1 || strings.Count(s, ".") != 2 {
		return nil, errors.New("not a compact JWS (want header.payload.signature)")
	}
	t := &Token{Raw: s, SigningInput: s[:last]}
	hdr, err := b64(s[:first])
	if err != nil {
		return nil, errors.New("header is not unpadded base64url")
	}
	if t.Payload, err = b64(s[first+1 : last]); err != nil {
		return nil, errors.New("payload is not unpadded base64url")
	}
	if t.Signature, err = b64(s[last+1:]); err != nil {
		return nil, errors.New("signature is not unpadded base64url")
	}
	if err := Decode(hdr, &t.Header); err != nil || t.Header == nil {
		return nil, errors.New("header is not a JSON object")
	}
	var ok bool
	if t.Alg, ok = headerString(t.Header, "alg"); !ok || t.Alg == "" {
		return nil, errors.New("header has no alg")
	}
	if t.Typ, ok = headerString(t.Header, "typ"); !ok {
		return nil, errors.New("header typ is not a string")
	}
	if t.Kid, ok = headerString(t.Header, "kid"); !ok {
		return nil, errors.New("header kid is not a string")
	}
	if _, crit := t.Header["crit"]; crit {
		return nil, errors.New("header has critical extensions this server does not understand")
	}
	return t, nil
}

func headerString(h map[string]json.RawMessage, name string) (string, bool) {
	raw, ok := h[name]
	if !ok {
		return "", true
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return "", false
	}
	return s, true
}

// Verify checks the signature with key under the token's alg, which must be
// in allowed and fit the key type.
func (t *Token) Verify(key crypto.PublicKey, allowed ...string) error {
	ok := false
	for _, a := range allowed {
		ok = ok || a == t.Alg
	}
	if !ok {
		return fmt.Errorf("algorithm %q is not accepted (accepted: %s)", t.Alg, strings.Join(allowed, " "))
	}
	return VerifySignature(t.Alg, key, []byte(t.SigningInput), t.Signature)
}

// ErrBadSignature is returned when a signature does not verify.
var ErrBadSignature = errors.New("signature does not verify")

// VerifySignature checks sig over input under alg with key.
func VerifySignature(alg string, key crypto.PublicKey, input, sig []byte) error {
	switch alg {
	case ES256, ES384:
		k, ok := key.(*ecdsa.PublicKey)
		curve, size := elliptic.P256(), 32
		if alg == ES384 {
			curve, size = elliptic.P384(), 48
		}
		if !ok || k.Curve != curve {
			return fmt.Errorf("%s needs an EC %s key", alg, curve.Params().Name)
		}
		if len(sig) != 2*size {
			return ErrBadSignature
		}
		r, s := new(big.Int).SetBytes(sig[:size]), new(big.Int).SetBytes(sig[size:])
		var ok2 bool
		if alg == ES256 {
			h := sha256.Sum256(input)
			ok2 = ecdsa.Verify(k, h[:], r, s)
		} else {
			h := sha512.Sum384(input)
			ok2 = ecdsa.Verify(k, h[:], r, s)
		}
		if !ok2 {
			return ErrBadSignature
		}
		return nil
	case PS256, RS256:
		k, ok := key.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%s needs an RSA key", alg)
		}
		h := sha256.Sum256(input)
		var err error
		if alg == PS256 {
			err = rsa.VerifyPSS(k, crypto.SHA256, h[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		} else {
			err = rsa.VerifyPKCS1v15(k, crypto.SHA256, h[:], sig)
		}
		if err != nil {
			return ErrBadSignature
		}
		return nil
	case EdDSA:
		k, ok := key.(ed25519.PublicKey)
		if !ok {
			return errors.New("EdDSA needs an Ed25519 key")
		}
		if !ed25519.Verify(k, input, sig) {
			return ErrBadSignature
		}
		return nil
	}
	return fmt.Errorf("algorithm %q is not supported", alg)
}

// AlgFor returns the JWS algorithm this package signs with for a key.
func AlgFor(key crypto.Signer) (string, error) {
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return ES256, nil
		case elliptic.P384():
			return ES384, nil
		}
	case *rsa.PublicKey:
		return PS256, nil
	case ed25519.PublicKey:
		return EdDSA, nil
	}
	return "", fmt.Errorf("unsupported signing key %T", key)
}

// Sign produces a compact JWS of claims with header (alg is set from
// the key unless header has one).
func Sign(key crypto.Signer, header map[string]any, claims any) (string, error) {
	alg, _ := header["alg"].(string)
	if alg == "" {
		var err error
		if alg, err = AlgFor(key); err != nil {
			return "", err
		}
		header["alg"] = alg
	}
	hdr, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sig, err := SignInput(alg, key, []byte(input))
	if err != nil {
		return "", err
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// SignInput signs input under alg, in the JWS signature format (r||s for
// ECDSA).
func SignInput(alg string, key crypto.Signer, input []byte) ([]byte, error) {
	switch alg {
	case ES256, ES384:
		k, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s needs an ECDSA private key", alg)
		}
		var h []byte
		size := 32
		if alg == ES256 {
			s := sha256.Sum256(input)
			h = s[:]
		} else {
			s := sha512.Sum384(input)
			h, size = s[:], 48
		}
		r, s, err := ecdsa.Sign(rand.Reader, k, h)
		if err != nil {
			return nil, err
		}
		out := make([]byte, 2*size)
		r.FillBytes(out[:size])
		s.FillBytes(out[size:])
		return out, nil
	case PS256:
		h := sha256.Sum256(input)
		return key.Sign(rand.Reader, h[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	case RS256:
		h := sha256.Sum256(input)
		return key.Sign(rand.Reader, h[:], crypto.SHA256)
	case EdDSA:
		return key.Sign(rand.Reader, input, crypto.Hash(0))
	}
	return nil, fmt.Errorf("algorithm %q is not supported", alg)
}

// NumericDate reads a JSON number of seconds (integer or fraction) as used
// by iat, exp and nbf; it refuses strings, negatives and absurd values.
func NumericDate(raw json.RawMessage) (float64, error) {
	b := bytes.TrimSpace(raw)
	if !isJSONNumber(b) {
		return 0, errors.New("not a number")
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || f < 0 || f > 1e11 {
		return 0, errors.New("not a valid NumericDate")
	}
	return f, nil
}

// isJSONNumber reports whether b is exactly one JSON number (RFC 8259 §6):
// -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
func isJSONNumber(b []byte) bool {
	i := 0
	digits := func() int {
		n := 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		digits()
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(b)
}

// Decode reads a JOSE JSON object (a header, claims, a JWK) strictly: a
// member name given twice, a name matching a field only in another case,
// or invalid UTF-8 is an error. RFC 7515 §4 lets a parser take the last of
// duplicate names; refusing them leaves no reading for another parser to
// differ from.
func Decode(data []byte, v any) error {
	return jsonv2.Unmarshal(data, v)
}
