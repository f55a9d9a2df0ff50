package mastio

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"filippo.io/age"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

// KEKConfigName is the name, in a backup's config/, of a shared
// deployment's key-encryption key.
const KEKConfigName = "key-encryption-key"

// Backup writes a backup of this Mastio to w, encrypted to recipients
// (see package backup): a snapshot of the database taken while it serves,
// the data directory, the configuration documents of Settings.BackupConfig
// and, for a shared deployment, its key-encryption key (the database
// itself is then backed up with pg_dump). It is recorded (backup.created)
// once written.
func (m *Mastio) Backup(ctx context.Context, w io.Writer, recipients []age.Recipient, details map[string]any) (*backup.Manifest, error) {
	cfg := map[string][]byte{}
	if m.cfg.BackupConfig != nil {
		for name, data := range m.cfg.BackupConfig() {
			cfg[name] = data
		}
	}
	if m.kek != nil {
		// As key_encryption_key_file holds it, so the restored file can be
		// pointed at as it is.
		cfg[KEKConfigName] = []byte(base64.StdEncoding.EncodeToString(m.kek) + "\n")
	}
	man, err := backup.Write(ctx, w, backup.Source{
		DataDir:  m.dataDir,
		Skip:     m.notBackedUp(),
		Snapshot: m.snapshot,
		Config:   cfg,
		Version:  Version(),
	}, recipients...)
	if err != nil {
		return nil, err
	}
	d := mergeMaps(map[string]any{"database": man.Database, "schema_version": man.SchemaVersion, "audit_last_seq": man.AuditLastSeq,
		"files": len(man.Files), "recipients": len(recipients)}, details)
	if _, err := m.audit.Append(context.WithoutCancel(ctx), audit.Event{Type: "backup.created", Actor: ActorOf(ctx), Subject: m.orgID, Details: d}); err != nil {
		return nil, err
	}
	return man, nil
}

// notBackedUp names the data directory's files a backup does not copy:
// the live database's (the snapshot replaces them) and the configuration
// an earlier restore left (a backup holds the configuration in force).
func (m *Mastio) notBackedUp() func(string) bool {
	db := ""
	if rel, err := filepath.Rel(m.dataDir, m.dbPath); err == nil && !strings.HasPrefix(rel, "..") && !m.database.sharable() {
		db = filepath.ToSlash(rel)
	}
	return func(name string) bool {
		if strings.HasPrefix(name, RestoreDirName+"/") {
			return true
		}
		if db == "" || !strings.HasPrefix(name, db) {
			return false
		}
		switch strings.TrimPrefix(name, db) {
		case "", "-wal", "-shm", "-journal":
			return true
		}
		return false
	}
}

// snapshot copies the database to path (SQLite) and reads the backup's
// facts from the copy; a Postgres database is backed up with pg_dump, and
// the facts come from it as it is now.
func (m *Mastio) snapshot(ctx context.Context, dst string) (backup.Manifest, bool, error) {
	man := backup.Manifest{OrgID: m.orgID, RootSHA256: pki.Fingerprint(m.ca.Root()), CAKeys: strings.SplitN(m.ca.KeyStore(), ":", 2)[0]}
	snap, ok := m.store.(store.Snapshotter)
	if !ok {
		man.Database = "postgres"
		if v, ok := m.store.(interface {
			SchemaVersion(context.Context) (int, error)
		}); ok {
			var err error
			if man.SchemaVersion, err = v.SchemaVersion(ctx); err != nil {
				return man, false, err
			}
		}
		head, err := m.store.AuditHead(ctx)
		if err != nil {
			return man, false, err
		}
		man.AuditLastSeq, man.AuditLastHash = head.Seq, headHash(head)
		return man, false, nil
	}
	man.Database = "sqlite"
	if err := snap.SnapshotTo(ctx, dst); err != nil {
		return man, false, err
	}
	facts, version, err := sqlite.Peek(ctx, dst, cfgOrgID, cfgRootSHA256)
	if err != nil {
		return man, false, err
	}
	if facts[cfgRootSHA256] != man.RootSHA256 || facts[cfgOrgID] != m.orgID {
		return man, false, fmt.Errorf("the snapshot's Org CA or org id is not this Mastio's")
	}
	man.SchemaVersion = version
	ro, err := sqlite.OpenReadOnly(dst)
	if err != nil {
		return man, false, err
	}
	defer ro.Close()
	head, err := ro.AuditHead(ctx)
	if err != nil {
		return man, false, err
	}
	man.AuditLastSeq, man.AuditLastHash = head.Seq, headHash(head)
	return man, true, nil
}

func headHash(h store.AuditHead) string {
	if h.Seq == 0 {
		return ""
	}
	return hex.EncodeToString(h.Hash)
}
