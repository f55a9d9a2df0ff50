// Package dpop verifies DPoP proofs (RFC 9449) at a resource server or
// token endpoint: the proof's syntax, signature and key, its binding to
// the request (htm, htu), to the access token (ath), to a server nonce,
// its freshness (iat) and its single use (a replay cache keyed by the
// proof key and jti).
package dpop

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// Algs are the proof algorithms accepted, asymmetric only.
var Algs = []string{jwt.ES256, jwt.PS256, jwt.EdDSA}

// AlgsParam is the value of the algs parameter of WWW-Authenticate.
const AlgsParam = "ES256 PS256 EdDSA"

// Error codes of RFC 9449 §7.1 and §8.
const (
	CodeInvalidProof = "invalid_dpop_proof"
	CodeUseNonce     = "use_dpop_nonce"
)

// Error is a refused proof.
type Error struct {
	Code        string
	Description string
}

func (e *Error) Error() string { return e.Code + ": " + e.Description }

// CodeReplayUnavailable: the replay cache could not be asked (a shared
// cache unreachable); the request is refused with 503, not as a bad proof.
const CodeReplayUnavailable = "replay_cache_unavailable"

func invalid(format string, args ...any) *Error {
	return &Error{Code: CodeInvalidProof, Description: fmt.Sprintf(format, args...)}
}

// NonceMode says whether proofs must carry a server nonce.
type NonceMode int

const (
	// NonceRequired: every proof must carry a valid nonce (default).
	NonceRequired NonceMode = iota
	// NonceOptional: a nonce is checked when present.
	NonceOptional
	// NonceOff: nonces are neither issued nor checked.
	NonceOff
)

// ParseNonceMode reads off, optional or required.
func ParseNonceMode(s string) (NonceMode, error) {
	switch s {
	case "", "required":
		return NonceRequired, nil
	case "optional":
		return NonceOptional, nil
	case "off":
		return NonceOff, nil
	}
	return 0, fmt.Errorf("dpop nonce mode %q: want off, optional or required", s)
}

// DefaultMaxSkew is how far in the future a proof's iat may be by default
// (the original Mastio's DPOP_CLOCK_SKEW).
const DefaultMaxSkew = 5 * time.Second

// Proof is a verified DPoP proof.
type Proof struct {
	JKT   string // RFC 7638 thumbprint of the proof key
	JTI   string
	HTM   string
	HTU   string
	IAT   time.Time
	ATH   string
	Nonce string
	Alg   string
	Key   crypto.PublicKey
}

// Checks are what a proof must match.
type Checks struct {
	// Method is the request method.
	Method string
	// URL is the request URI the proof's htu must equal after
	// normalization (scheme://host[:port]/path, no query or fragment).
	URL string
	// AccessToken, when set, must be what ath hashes.
	AccessToken string
	// Now is the time of the check; zero means time.Now().
	Now time.Time
	// MaxAge is how far in the past iat may be. Default 60s.
	MaxAge time.Duration
	// MaxSkew is how far in the future iat may be. Default 5s.
	MaxSkew time.Duration
	// Nonces issues and checks server nonces; nil disables nonces.
	Nonces *Nonces
	// NonceMode applies when Nonces is set.
	NonceMode NonceMode
	// Replay records (jkt, jti) pairs; nil disables the replay check.
	Replay ReplayCache
}

type claims struct {
	JTI   *string         `json:"jti"`
	HTM   *string         `json:"htm"`
	HTU   *string         `json:"htu"`
	IAT   json.RawMessage `json:"iat"`
	ATH   *string         `json:"ath"`
	Nonce *string         `json:"nonce"`
}

// Parse checks a proof's syntax, header, key and signature — everything
// that does not depend on the request.
func Parse(s string) (*Proof, *Error) {
	p, _, err := parse(s)
	return p, err
}

func parse(s string) (*Proof, *claims, *Error) {
	tok, err := jwt.Parse(s)
	if err != nil {
		return nil, nil, invalid("malformed proof: %v", err)
	}
	if !strings.EqualFold(tok.Typ, "dpop+jwt") {
		return nil, nil, invalid("typ must be dpop+jwt, got %q", tok.Typ)
	}
	switch tok.Alg {
	case jwt.ES256, jwt.PS256, jwt.EdDSA:
	case "none":
		return nil, nil, invalid("alg none is not allowed: proofs must be signed")
	default:
		if strings.HasPrefix(tok.Alg, "HS") {
			return nil, nil, invalid("alg %s is a MAC; DPoP requires an asymmetric algorithm (%s)", tok.Alg, AlgsParam)
		}
		return nil, nil, invalid("alg %s is not accepted (accepted: %s)", tok.Alg, AlgsParam)
	}
	rawJWK, ok := tok.Header["jwk"]
	if !ok {
		return nil, nil, invalid("the header has no jwk")
	}
	for _, forbidden := range []string{"x5c", "x5u", "jku"} {
		if _, ok := tok.Header[forbidden]; ok {
			return nil, nil, invalid("the header must carry the key in jwk only, not %s", forbidden)
		}
	}
	key, jkt, err := jwt.ParseJWK(rawJWK)
	if err != nil {
		if errors.Is(err, jwt.ErrPrivateJWK) {
			return nil, nil, invalid("the jwk contains a private key")
		}
		return nil, nil, invalid("bad jwk: %v", err)
	}
	if err := tok.Verify(key, tok.Alg); err != nil {
		return nil, nil, invalid("signature: %v", err)
	}
	var c claims
	if err := jwt.Decode(tok.Payload, &c); err != nil {
		return nil, nil, invalid("claims are not a JSON object with the expected types: %v", err)
	}
	p := &Proof{JKT: jkt, Alg: tok.Alg, Key: key}
	if c.JTI == nil || *c.JTI == "" || len(*c.JTI) > 256 {
		return nil, nil, invalid("jti is required (1-256 characters)")
	}
	if c.HTM == nil || *c.HTM == "" {
		return nil, nil, invalid("htm is required")
	}
	if c.HTU == nil || *c.HTU == "" {
		return nil, nil, invalid("htu is required")
	}
	if len(c.IAT) == 0 {
		return nil, nil, invalid("iat is required")
	}
	iat, err := jwt.NumericDate(c.IAT)
	if err != nil {
		return nil, nil, invalid("iat: %v", err)
	}
	sec, frac := math.Modf(iat)
	p.IAT = time.Unix(int64(sec), int64(frac*1e9))
	p.JTI, p.HTM, p.HTU = *c.JTI, *c.HTM, *c.HTU
	if c.ATH != nil {
		p.ATH = *c.ATH
	}
	if c.Nonce != nil {
		p.Nonce = *c.Nonce
	}
	return p, &c, nil
}

// Verify checks the DPoP header values of a request. values are all the
// DPoP header lines received: exactly one is allowed.
func Verify(ctx context.Context, values []string, c Checks) (*Proof, *Error) {
	if len(values) == 0 || len(values) == 1 && strings.TrimSpace(values[0]) == "" {
		return nil, invalid("the DPoP header is missing")
	}
	if len(values) > 1 || strings.Contains(values[0], ",") {
		return nil, invalid("exactly one DPoP header is allowed")
	}
	p, cl, perr := parse(strings.TrimSpace(values[0]))
	if perr != nil {
		return nil, perr
	}
	now := c.Now
	if now.IsZero() {
		now = time.Now()
	}
	maxAge, maxSkew := c.MaxAge, c.MaxSkew
	if maxAge <= 0 {
		maxAge = 60 * time.Second
	}
	if maxSkew <= 0 {
		maxSkew = DefaultMaxSkew
	}
	if p.HTM != c.Method {
		return nil, invalid("htm %q does not match the request method %s", p.HTM, c.Method)
	}
	got, err := NormalizeHTU(p.HTU)
	if err != nil {
		return nil, invalid("htu %q: %v", p.HTU, err)
	}
	want, err := NormalizeHTU(c.URL)
	if err != nil {
		return nil, invalid("request URL %q: %v", c.URL, err)
	}
	if got != want {
		return nil, &Error{Code: CodeInvalidProof, Description: fmt.Sprintf("htu mismatch: the proof is for %s but this request is %s", got, want)}
	}
	if p.IAT.Before(now.Add(-maxAge)) {
		return nil, invalid("the proof is too old (iat %s, older than %s)", p.IAT.UTC().Format(time.RFC3339), maxAge)
	}
	if p.IAT.After(now.Add(maxSkew)) {
		return nil, invalid("iat %s is in the future", p.IAT.UTC().Format(time.RFC3339))
	}
	if c.AccessToken != "" {
		if cl.ATH == nil {
			return nil, invalid("ath is required with an access token")
		}
		sum := sha256.Sum256([]byte(c.AccessToken))
		want := base64.RawURLEncoding.EncodeToString(sum[:])
		if subtle.ConstantTimeCompare([]byte(p.ATH), []byte(want)) != 1 {
			return nil, invalid("ath does not match the access token")
		}
	} else if cl.ATH != nil {
		return nil, invalid("ath is only allowed with an access token")
	}
	nonceChecked := false
	if c.Nonces != nil && c.NonceMode != NonceOff {
		switch {
		case p.Nonce == "" && c.NonceMode == NonceRequired:
			return nil, &Error{Code: CodeUseNonce, Description: "a server nonce is required in the DPoP proof: use the DPoP-Nonce header"}
		case p.Nonce != "" && !c.Nonces.Valid(p.Nonce, now):
			return nil, &Error{Code: CodeUseNonce, Description: "the DPoP nonce is stale or unknown; use the one in the DPoP-Nonce header"}
		}
		nonceChecked = p.Nonce != ""
	}
	if c.Replay != nil {
		// A proof without a nonce bound to this cache's epoch may have
		// been used before the cache began (before a restart): it is
		// accepted only if issued after then, counting the clock skew a
		// proof's iat is allowed.
		if !nonceChecked && p.IAT.Before(c.Replay.Since().Add(maxSkew)) {
			if c.Nonces != nil && c.NonceMode != NonceOff {
				return nil, &Error{Code: CodeUseNonce, Description: "the server restarted after this proof was signed: sign a new one with the nonce in the DPoP-Nonce header"}
			}
			return nil, invalid("the proof was signed before the server's replay protection began (a restart at %s): sign a new one",
				c.Replay.Since().UTC().Format(time.RFC3339))
		}
		fresh, err := c.Replay.Use(ctx, ReplayKey(p.JKT, p.JTI), p.IAT.Add(maxAge+maxSkew))
		if err != nil { // fail closed: unchecked is refused
			return nil, &Error{Code: CodeReplayUnavailable, Description: "the replay cache is unavailable, so the proof cannot be checked: retry later"}
		}
		if !fresh {
			return nil, invalid("the proof was already used (replayed jti)")
		}
	}
	return p, nil
}

// ReplayKey is the replay-cache key of a proof: its key thumbprint and jti.
func ReplayKey(jkt, jti string) string { return "dpop|" + jkt + "|" + jti }
