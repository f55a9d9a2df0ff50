package token

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// TypeAccessToken is the typ header of access tokens (RFC 9068).
const TypeAccessToken = "at+jwt"

// Confirmation binds a token to proof of possession (RFC 7800).
type Confirmation struct {
	// JKT is the RFC 7638 thumbprint of the DPoP key (RFC 9449).
	JKT string `json:"jkt,omitempty"`
	// X5T is the base64url SHA-256 of the client certificate (RFC 8705).
	X5T string `json:"x5t#S256,omitempty"`
}

// Claims are an access token's claims.
type Claims struct {
	Issuer   string        `json:"iss"`
	Subject  string        `json:"sub"`
	Audience string        `json:"aud"`
	Expiry   int64         `json:"exp"`
	IssuedAt int64         `json:"iat"`
	ID       string        `json:"jti"`
	ClientID string        `json:"client_id"`
	Scope    string        `json:"scope,omitempty"`
	SPIFFEID string        `json:"spiffe_id,omitempty"`
	Cnf      *Confirmation `json:"cnf,omitempty"`
}

// Mint signs c with the active key. ID and IssuedAt are filled in when
// empty.
func (r *KeyRing) Mint(c Claims) (string, error) {
	k := r.Active()
	if k == nil || k.signer == nil {
		return "", errors.New("no active signing key")
	}
	if c.ID == "" {
		b := make([]byte, 16)
		rand.Read(b)
		c.ID = base64.RawURLEncoding.EncodeToString(b)
	}
	if c.IssuedAt == 0 {
		c.IssuedAt = time.Now().Unix()
	}
	return jwt.Sign(k.signer, map[string]any{"alg": jwt.ES256, "typ": TypeAccessToken, "kid": k.Kid}, c)
}

// Expect are the checks of Verify beyond the signature.
type Expect struct {
	Issuer   string
	Audience string
	Leeway   time.Duration
	Now      time.Time
}

// VerifyError is a refused token; the message is fit for the caller.
type VerifyError struct{ Description string }

func (e *VerifyError) Error() string { return "invalid_token: " + e.Description }

func verr(format string, args ...any) *VerifyError {
	return &VerifyError{Description: fmt.Sprintf(format, args...)}
}

// Verifier checks access tokens against a key ring, caching each verified
// token (by hash) until it expires, so the signature is checked once per
// token rather than once per request. A cached token is refused as soon as
// its key leaves the ring.
type Verifier struct {
	ring *KeyRing
	max  int

	mu    sync.Mutex
	cache map[[32]byte]cached
}

type cached struct {
	claims *Claims
	kid    string
}

// NewVerifier returns a verifier caching at most max tokens.
func NewVerifier(ring *KeyRing, max int) *Verifier {
	if max <= 0 {
		max = 100_000
	}
	return &Verifier{ring: ring, max: max, cache: map[[32]byte]cached{}}
}

func (r *KeyRing) verifyingKey(kid string, now time.Time) *SigningKey {
	r.mu.RLock()
	k := r.all[kid]
	r.mu.RUnlock()
	if k == nil || k.Status == "deprecated" && !k.ExpiresAt.IsZero() && now.After(k.ExpiresAt) {
		return nil
	}
	return k
}

// Verify checks a token's signature (or finds it verified in the cache),
// issuer, audience and times.
func (v *Verifier) Verify(token string, e Expect) (*Claims, *VerifyError) {
	now := e.Now
	if now.IsZero() {
		now = time.Now()
	}
	sum := sha256.Sum256([]byte(token))
	v.mu.Lock()
	hit, ok := v.cache[sum]
	v.mu.Unlock()
	var c *Claims
	if ok && v.ring.verifyingKey(hit.kid, now) != nil {
		c = hit.claims
	} else {
		var kid string
		var err *VerifyError
		if c, kid, err = v.verifySignature(token, now); err != nil {
			return nil, err
		}
		v.remember(sum, cached{claims: c, kid: kid}, now)
	}
	return c, checkClaims(c, e, now)
}

// Parse checks a token's syntax and claim types only (it is fuzzed).
func Parse(token string) (*jwt.Token, *Claims, *VerifyError) {
	t, err := jwt.Parse(token)
	if err != nil {
		return nil, nil, verr("malformed token: %v", err)
	}
	if t.Typ != TypeAccessToken {
		return nil, nil, verr("not an access token of this Mastio (typ %q)", t.Typ)
	}
	var c Claims
	if err := jwt.Decode(t.Payload, &c); err != nil {
		return nil, nil, verr("claims: %v", err)
	}
	return t, &c, nil
}

func (v *Verifier) verifySignature(token string, now time.Time) (*Claims, string, *VerifyError) {
	t, c, perr := Parse(token)
	if perr != nil {
		return nil, "", perr
	}
	if t.Alg != jwt.ES256 {
		return nil, "", verr("alg %q is not accepted (ES256 only)", t.Alg)
	}
	k := v.ring.verifyingKey(t.Kid, now)
	if k == nil {
		return nil, "", verr("unknown or retired signing key %q", t.Kid)
	}
	if err := t.Verify(k.Public, jwt.ES256); err != nil {
		return nil, "", verr("signature: %v", err)
	}
	return c, t.Kid, nil
}

func checkClaims(c *Claims, e Expect, now time.Time) *VerifyError {
	leeway := int64(math.Ceil(e.Leeway.Seconds()))
	n := now.Unix()
	switch {
	case c.Expiry == 0:
		return verr("the token has no exp")
	case n > c.Expiry+leeway:
		return verr("the token expired at %s", time.Unix(c.Expiry, 0).UTC().Format(time.RFC3339))
	case c.IssuedAt > n+leeway:
		return verr("the token was issued in the future")
	case e.Issuer != "" && c.Issuer != e.Issuer:
		return verr("issuer %q is not %q", c.Issuer, e.Issuer)
	case e.Audience != "" && c.Audience != e.Audience:
		return verr("audience %q is not %q", c.Audience, e.Audience)
	case c.Subject == "":
		return verr("the token has no sub")
	}
	return nil
}

func (v *Verifier) remember(sum [32]byte, c cached, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.cache) >= v.max {
		for k, e := range v.cache {
			if now.Unix() > e.claims.Expiry {
				delete(v.cache, k)
			}
		}
		if len(v.cache) >= v.max {
			return
		}
	}
	v.cache[sum] = c
}
