package mastio

import (
	"context"
	"fmt"
	"os"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// Start runs when the configuration becomes the one in force: it opens the
// location (if no request did before), makes the configuration's logger
// the one of the location's background work, applies its audit settings
// to the shared writer (not at provisioning, which a reload that
// fails later would also have run), and audits system.start (once per
// process) and config.load with details.
func (m *Mastio) Start(ctx context.Context, details map[string]any) error {
	if err := m.Open(); err != nil {
		return err
	}
	m.logger.Store(m.log) // the location's background work logs as the config in force
	if err := m.adoptAdminSecret(ctx); err != nil {
		return err
	}
	m.inForce.Store(m)
	reported.Store(m)
	m.audit.SetSync(m.cfg.AuditSync)
	var err error
	m.startOnce.Do(func() {
		_, err = m.audit.Append(ctx, audit.Event{Type: "system.start", Actor: "system", Subject: m.orgID,
			Details: map[string]any{"version": Version(), "pid": os.Getpid(), "data_dir": m.dataDir, "database": m.dbPath}})
	})
	if err != nil {
		return fmt.Errorf("auditing system start: %w", err)
	}
	d := map[string]any{"org_id": m.orgID, "trust_domain": m.cfg.TrustDomain, "public_url": m.PublicURL(),
		"audit_sync": m.cfg.AuditSync.String()}
	for k, v := range details {
		d[k] = v
	}
	if _, err := m.audit.Append(ctx, audit.Event{Type: "config.load", Actor: "system", Subject: m.orgID, Details: d}); err != nil {
		return fmt.Errorf("auditing config load: %w", err)
	}
	return nil
}

// AuditShutdown records that the process is shutting down.
func (m *Mastio) AuditShutdown(ctx context.Context) error {
	if m.audit == nil {
		return nil
	}
	if _, err := m.audit.Append(ctx, audit.Event{Type: "system.stop", Actor: "system", Subject: m.orgID,
		Details: map[string]any{"pid": os.Getpid()}}); err != nil {
		return err
	}
	return m.WriteCheckpoint(ctx, "shutdown") // the last row: the chain as this process leaves it, signed
}
