package mastio

import (
	"context"
	"crypto/hmac"
	"fmt"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// cfgAdminSecret is the config key of a shared deployment's admin secret
// (its salted hash: Secret.String).
const cfgAdminSecret = "admin_secret_hash"

// AdminSecretOf is the stored form of a configuration's admin secret. In
// a shared deployment the database holds the one the instances accept:
// a configuration whose secret differs (a rotation: runbook §7, the new
// secret set everywhere and the instances restarted) replaces it when it
// starts, audited as admin.secret_changed, and every instance accepts the
// new one and refuses the old from then on.
func (s *Shared) AdminSecretOf(plain string) (*Secret, error) {
	if !s.shared {
		return NewSecret(plain)
	}
	stored, ok, err := s.store.Config(context.Background(), cfgAdminSecret)
	if err != nil {
		return nil, fmt.Errorf("admin secret: %w", err)
	}
	if ok {
		cur, err := ParseSecret(stored)
		if err != nil {
			return nil, err
		}
		if hmac.Equal(mac(cur.salt, plain), cur.mac) {
			return cur, nil
		}
	}
	return NewSecret(plain)
}

// adoptAdminSecret makes this configuration's secret the deployment's,
// when it is not already (see AdminSecretOf).
func (m *Mastio) adoptAdminSecret(ctx context.Context) error {
	if !m.shared {
		return nil
	}
	want := m.cfg.AdminSecret.String()
	stored, ok, err := m.store.Config(ctx, cfgAdminSecret)
	if err != nil {
		return err
	}
	if !ok || stored != want {
		reason := "first start"
		if ok {
			reason = "a configuration with another admin secret started: it is the deployment's from now on"
		}
		if _, err := m.audit.Change(ctx, func(c *audit.Change) error {
			if err := c.SetConfig(ctx, cfgAdminSecret, want); err != nil {
				return err
			}
			c.Record(audit.Event{Type: "admin.secret_changed", Actor: "system", Subject: m.orgID, Details: map[string]any{"reason": reason}})
			return nil
		}); err != nil {
			return fmt.Errorf("recording the admin secret: %w", err)
		}
	}
	m.adminSecret.Store(m.cfg.AdminSecret)
	return nil
}

// reloadAdminSecret reads the deployment's admin secret again (another
// instance changed it).
func (s *Shared) reloadAdminSecret(ctx context.Context) error {
	stored, ok, err := s.store.Config(ctx, cfgAdminSecret)
	if err != nil || !ok {
		return err
	}
	sec, err := ParseSecret(stored)
	if err != nil {
		return err
	}
	s.adminSecret.Store(sec)
	return nil
}

// currentAdminSecret is what X-Admin-Secret is checked against: the
// deployment's, or this configuration's.
func (m *Mastio) currentAdminSecret() *Secret {
	if sec := m.adminSecret.Load(); sec != nil {
		return sec
	}
	return m.cfg.AdminSecret
}
