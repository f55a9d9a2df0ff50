package mastio

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// InitDatabase creates an empty database for the Org CA already in
// dataDir: the explicit way to start over after losing the database (the
// start refuses to do it silently). It refuses when the database holds an
// installation already, and audits what it did as the new chain's first
// row.
func InitDatabase(ctx context.Context, dataDir string, db Database) (orgID string, err error) {
	dbPath := db.Location()
	pkiDir := filepath.Join(dataDir, "pki")
	data, err := os.ReadFile(filepath.Join(pkiDir, pki.RootCertFile))
	var root *x509.Certificate
	if err == nil {
		var certs []*x509.Certificate
		if certs, err = pki.ParseCertificatesPEM(data); err == nil && len(certs) > 0 {
			root = certs[0]
		} else if err == nil {
			err = errors.New("no certificate in it")
		}
	}
	if err != nil {
		return "", fmt.Errorf("no Org CA to keep in %s (%v): a data directory without one needs no init-database, `caddy run` creates everything", pkiDir, err)
	}
	if len(root.Subject.Organization) != 1 {
		return "", fmt.Errorf("the Org CA in %s names no organisation", pkiDir)
	}
	orgID = root.Subject.Organization[0]
	have, _, err := db.peek(ctx, cfgRootSHA256)
	if err != nil {
		return "", fmt.Errorf("database: %w", err)
	}
	if have[cfgRootSHA256] != "" {
		return "", fmt.Errorf("the database %s already belongs to an installation: nothing to do", dbPath)
	}
	st, err := db.open(ctx)
	if err != nil {
		return "", fmt.Errorf("database: %w", err)
	}
	defer st.Close()
	log := audit.Open(st, audit.Options{})
	defer log.Close()
	sum := pki.Fingerprint(root)
	// The facts and the first row of the new chain, in one transaction.
	_, err = log.Change(ctx, func(c *audit.Change) error {
		if _, err := c.InitConfig(ctx, cfgRootSHA256, sum); err != nil {
			return err
		}
		if got, err := c.InitConfig(ctx, cfgOrgID, orgID); err != nil || got != orgID {
			return errors.Join(err, fmt.Errorf("org id %q recorded, %q expected", got, orgID))
		}
		c.Record(audit.Event{Type: "system.database_created", Actor: "operator", Subject: orgID,
			Details: map[string]any{"reason": "caddy mastio init-database: a new database beside the existing Org CA",
				"org_ca_sha256": sum, "database": dbPath, "pid": os.Getpid()}})
		return nil
	})
	if err != nil {
		return "", err
	}
	return orgID, nil
}
