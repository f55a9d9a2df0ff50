// Package admin is the Mastio's administrator API: the registry of agents
// and enrollments behind the X-Admin-Secret header.
package admin

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
)

// Secret is the stored form of the admin secret: a random salt and
// HMAC-SHA256(salt, secret). The secret itself is never stored; a
// presented one is checked in constant time.
type Secret struct {
	salt []byte
	mac  []byte
}

const secretScheme = "hmac-sha256"

// NewSecret derives the stored form of secret with a fresh salt.
func NewSecret(secret string) (*Secret, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	return &Secret{salt: salt, mac: mac(salt, secret)}, nil
}

func mac(salt []byte, secret string) []byte {
	h := hmac.New(sha256.New, salt)
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// ParseSecret reads the form written by String.
func ParseSecret(s string) (*Secret, error) {
	parts := strings.Split(s, "$")
	if len(parts) != 3 || parts[0] != secretScheme {
		return nil, errors.New("admin secret hash: unknown format")
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[1])
	m, err2 := base64.RawStdEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || len(salt) < 16 || len(m) != sha256.Size {
		return nil, errors.New("admin secret hash: malformed")
	}
	return &Secret{salt: salt, mac: m}, nil
}

// String encodes the stored form: hmac-sha256$<salt>$<mac>.
func (s *Secret) String() string {
	return secretScheme + "$" + base64.RawStdEncoding.EncodeToString(s.salt) + "$" + base64.RawStdEncoding.EncodeToString(s.mac)
}

// Match reports, in constant time, whether candidate is the secret.
func (s *Secret) Match(candidate string) bool {
	if s == nil || candidate == "" {
		return false
	}
	return hmac.Equal(mac(s.salt, candidate), s.mac)
}
