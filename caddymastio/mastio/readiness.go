package mastio

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Readiness is the result of the readiness checks.
type Readiness struct {
	// Checks maps each check to "ok" or "error".
	Checks map[string]string `json:"checks"`
	// Reasons gives a short, path-free reason for each failed check.
	Reasons map[string]string `json:"reasons,omitempty"`
}

// Ready reports whether every check passed.
func (r Readiness) Ready() bool { return len(r.Reasons) == 0 }

// Readiness checks the database (a fresh read-write open and a committed
// write), the Org CA (files on disk, intermediate valid) and the signing
// keys. A check that changes state is logged once, with the full cause.
func (m *Mastio) Readiness(ctx context.Context) Readiness {
	res := Readiness{Checks: map[string]string{}, Reasons: map[string]string{}}
	record := func(name string, err error, reason string) {
		if err == nil {
			res.Checks[name] = "ok"
		} else {
			res.Checks[name] = "error"
			res.Reasons[name] = reason
		}
		m.noteReadiness(name, err)
	}
	dbErr := m.store.Check(ctx)
	reason := "unavailable"
	var he *store.HealthError
	if errors.As(dbErr, &he) {
		reason = he.Reason
	}
	record("database", dbErr, reason)
	pkiErr, pkiReason := m.ca.Check(), "ca_unavailable"
	if reason, ok := KeyStoreUnavailable(pkiErr); ok {
		pkiReason = reason // the key store's own words: "Vault is sealed"
	}
	record("pki", pkiErr, pkiReason)
	record("signing_keys", m.keys.Check(), "no_usable_key")
	if m.redis != nil && !m.redisDegrade {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		record("redis", m.redis.Ping(pctx), "unavailable")
		cancel()
	}
	chainReason, chainErr := m.chainReadiness()
	record("audit_chain", chainErr, chainReason)
	if len(res.Reasons) == 0 {
		res.Reasons = nil
	}
	return res
}

func (s *Shared) noteReadiness(check string, err error) {
	now := "ok"
	if err != nil {
		now = err.Error()
	}
	s.readyMu.Lock()
	prev, seen := s.lastReady[check]
	s.lastReady[check] = now
	s.readyMu.Unlock()
	if seen && prev == now || !seen && err == nil {
		return
	}
	if err != nil {
		s.log().Error("readiness check failing", zap.String("check", check), zap.Error(err))
	} else {
		s.log().Info("readiness check recovered", zap.String("check", check))
	}
}
