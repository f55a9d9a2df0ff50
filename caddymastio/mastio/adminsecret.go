package mastio

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// Secret is the form the admin secret is kept in: a random salt and
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

// AdminCheck is the outcome of CheckAdminSecret.
type AdminCheck struct {
	OK bool
	// Status, Code and Message answer a refusal: 401 admin_secret_required,
	// 403 admin_secret_invalid, 429 too_many_failed_attempts (RetryAfter
	// set), 503 audit_unavailable.
	Status     int
	Code       string
	Message    string
	RetryAfter time.Duration
}

// CheckAdminSecret checks a presented admin secret from a caller at ip.
// Failures are audited (admin.auth_failed) and limited per address — over
// the limit every attempt from the address is refused, right secret or
// not — and in total: beyond adminFailuresPerMinute, wrong secrets are
// refused without being audited one by one (the count is carried by the
// next audited failure), while the right secret still works, so an attack
// cannot lock the operator out.
func (m *Mastio) CheckAdminSecret(ctx context.Context, ip, method, path, presented string) AdminCheck {
	if ok, wait := m.adminFailLimit.Peek(ip); !ok {
		rateLimited.WithLabelValues("admin_auth", "ip").Inc()
		m.LogDecisionContext(ctx, "admin secret attempts limited", Decision{Kind: KindRateLimit, Reason: "admin_auth_ip", RemoteIP: ip})
		return AdminCheck{Status: 429, Code: "too_many_failed_attempts", RetryAfter: wait,
			Message: "too many failed admin secret attempts from this address; retry later"}
	}
	if m.currentAdminSecret().Match(presented) {
		m.LogDecisionContext(ctx, "admin secret accepted", Decision{Kind: KindAdminAuth, Allow: true, Reason: "match", RemoteIP: ip,
			Fields: []zap.Field{zap.String("method", method), zap.String("path", path)}})
		return AdminCheck{OK: true}
	}
	reason, res := "mismatch", AdminCheck{Status: 403, Code: "admin_secret_invalid", Message: "X-Admin-Secret does not match"}
	if strings.TrimSpace(presented) == "" {
		reason, res = "missing", AdminCheck{Status: 401, Code: "admin_secret_required", Message: "the X-Admin-Secret header is required"}
	}
	m.adminFailLimit.Allow(ip)
	if ok, wait := m.adminFailGlobal.Allow("all"); !ok {
		m.adminUnaudited.Add(1)
		rateLimited.WithLabelValues("admin_auth", "global").Inc()
		m.LogDecisionContext(ctx, "admin secret attempts limited", Decision{Kind: KindRateLimit, Reason: "admin_auth_global", RemoteIP: ip})
		return AdminCheck{Status: 429, Code: "too_many_failed_attempts", RetryAfter: wait,
			Message: "too many failed admin secret attempts; retry later"}
	}
	d := map[string]any{"reason": reason, "remote_ip": ip, "method": method}
	if n := m.adminUnaudited.Swap(0); n > 0 {
		d["unaudited_before"] = n
	}
	if _, err := m.audit.Append(ctx, audit.Event{Type: "admin.auth_failed", Actor: "anonymous", Subject: path,
		Result: audit.ResultDenied, Details: d}); err != nil {
		m.log.Error("auditing a failed admin secret", zap.Error(err))
		return AdminCheck{Status: 503, Code: "audit_unavailable", Message: "the audit log cannot be written"}
	}
	m.LogDecisionContext(ctx, "admin secret refused", Decision{Kind: KindAdminAuth, Reason: reason, RemoteIP: ip,
		Fields: []zap.Field{zap.String("method", method), zap.String("path", path)}})
	return res
}
