package token

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// AssertionAudience is the audience the original Mastio SDK puts in its
// client assertions.
const AssertionAudience = "agent-trust-broker"

// MaxAssertionLifetime bounds exp - iat of a client assertion.
const MaxAssertionLifetime = 5 * time.Minute

// ErrAssertionTooLong: the assertion lives longer than
// MaxAssertionLifetime (exp - iat).
var ErrAssertionTooLong = errors.New("client_assertion lives longer than 5m0s (exp - iat)")

// Assertion is a verified client assertion (RFC 7523 private_key_jwt with
// the signing certificate in x5c).
type Assertion struct {
	Leaf    *x509.Certificate
	Subject string
	JTI     string
	Nonce   string
	Expiry  time.Time
}

// AssertionChecks configure VerifyAssertion.
type AssertionChecks struct {
	Roots         *x509.CertPool
	Intermediates []*x509.Certificate
	// Audiences lists accepted aud values (any one must appear).
	Audiences []string
	Leeway    time.Duration
	Now       time.Time
}

type assertionClaims struct {
	Iss   string          `json:"iss"`
	Sub   string          `json:"sub"`
	Aud   json.RawMessage `json:"aud"`
	Exp   json.RawMessage `json:"exp"`
	Iat   json.RawMessage `json:"iat"`
	JTI   string          `json:"jti"`
	Nonce string          `json:"nonce"`
}

// VerifyAssertion checks the assertion's certificate chain (x5c, leaf
// first, standard base64 DER) up to the Org root, its signature by the
// leaf key, and its claims: iss = sub, an accepted aud, a short exp and a
// jti. The caller checks that the leaf is pinned to the agent named by
// sub and that the jti is used once.
func VerifyAssertion(raw string, c AssertionChecks) (*Assertion, error) {
	t, err := jwt.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("malformed client_assertion: %w", err)
	}
	var x5c []string
	if err := json.Unmarshal(t.Header["x5c"], &x5c); err != nil || len(x5c) == 0 || len(x5c) > 6 {
		return nil, fmt.Errorf("client_assertion needs x5c: 1-6 base64 DER certificates, leaf first")
	}
	certs := make([]*x509.Certificate, len(x5c))
	for i, s := range x5c {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("x5c[%d] is not base64 DER", i)
		}
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("x5c[%d]: %v", i, err)
		}
	}
	now := c.Now
	if now.IsZero() {
		now = time.Now()
	}
	inter := x509.NewCertPool()
	for _, ic := range append(certs[1:], c.Intermediates...) {
		inter.AddCert(ic)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: c.Roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("the x5c certificate does not chain to the Org CA: %v", err)
	}
	allowed := []string{jwt.ES256, jwt.ES384, jwt.RS256, jwt.PS256, jwt.EdDSA}
	if err := t.Verify(certs[0].PublicKey, allowed...); err != nil {
		return nil, fmt.Errorf("client_assertion signature: %v", err)
	}
	var cl assertionClaims
	if err := jwt.Decode(t.Payload, &cl); err != nil {
		return nil, fmt.Errorf("client_assertion claims: %v", err)
	}
	if cl.Sub == "" || cl.Iss != cl.Sub {
		return nil, fmt.Errorf("client_assertion needs sub and iss both set to the agent id")
	}
	if cl.JTI == "" || len(cl.JTI) > 256 {
		return nil, fmt.Errorf("client_assertion needs a jti")
	}
	var auds []string
	var one string
	if json.Unmarshal(cl.Aud, &one) == nil {
		auds = []string{one}
	} else if json.Unmarshal(cl.Aud, &auds) != nil {
		return nil, fmt.Errorf("client_assertion aud must be a string or an array of strings")
	}
	okAud := false
	for _, a := range auds {
		for _, w := range c.Audiences {
			okAud = okAud || a == w
		}
	}
	if !okAud {
		return nil, fmt.Errorf("client_assertion aud %v is not one of %v", auds, c.Audiences)
	}
	exp, err1 := jwt.NumericDate(cl.Exp)
	iat, err2 := jwt.NumericDate(cl.Iat)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("client_assertion needs numeric exp and iat")
	}
	leeway := c.Leeway.Seconds()
	n := float64(now.Unix())
	switch {
	case n > exp+leeway:
		return nil, fmt.Errorf("client_assertion expired")
	case iat > n+leeway:
		return nil, fmt.Errorf("client_assertion iat is in the future")
	case exp-iat > MaxAssertionLifetime.Seconds():
		return nil, ErrAssertionTooLong
	}
	sec, _ := math.Modf(exp)
	return &Assertion{Leaf: certs[0], Subject: cl.Sub, JTI: cl.JTI, Nonce: cl.Nonce, Expiry: time.Unix(int64(sec), 0)}, nil
}
