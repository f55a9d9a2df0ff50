package mastio

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"filippo.io/age"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/postgres"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

// RestoreOptions say what to restore where.
type RestoreOptions struct {
	// Archive is the backup (see Mastio.Backup), read once.
	Archive io.Reader
	// Identities decrypt it (an age identity, or a passphrase's).
	Identities []age.Identity
	// DataDir is the data directory to restore into.
	DataDir string
	// Database is where the SQLite database goes; default
	// DataDir/mastio.db.
	Database string
	// Force replaces a data directory (or database file) that is not
	// empty. What it replaces is moved aside, never deleted.
	Force bool
}

// Restored is what a restore did.
type Restored struct {
	Manifest *backup.Manifest
	// Verified is the walk of the restored audit chain.
	Verified audit.VerifyResult
	// Replaced names where the directory (and database) that were there
	// were moved; empty when there were none.
	Replaced []string
	// ConfigDir holds the configuration documents of the backup.
	ConfigDir string
}

// RestoreDirName is the directory, in a restored data directory, that
// holds the backup's configuration documents (not read by the Mastio;
// compare them with the configuration in force).
const RestoreDirName = "restored-config"

// Restore checks a backup whole and then puts it in place: nothing is
// changed until the archive decrypted, every checksum matched, the
// schema is one this binary knows, the Org CA is the one the database
// was made with and the audit chain verifies. A data directory in use by
// a running Mastio is refused; one that is not empty needs Force.
func Restore(ctx context.Context, o RestoreOptions) (*Restored, error) {
	dir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return nil, err
	}
	dbPath := o.Database
	if dbPath == "" {
		dbPath = filepath.Join(dir, "mastio.db")
	}
	if dbPath, err = filepath.Abs(dbPath); err != nil {
		return nil, err
	}
	release, err := checkRestoreTarget(dir, dbPath, o.Force)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, err
	}
	staging, err := os.MkdirTemp(filepath.Dir(dir), ".mastio-restore-*")
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer os.RemoveAll(staging)
	man, err := backup.Extract(o.Archive, staging, o.Identities...)
	if err != nil {
		return nil, err
	}
	res := &Restored{Manifest: man}
	if res.Verified, err = checkRestored(ctx, staging, man); err != nil {
		return nil, err
	}

	// Put it in place: the database into the new data directory (or its
	// own path), the configuration beside the data, then one rename.
	data := filepath.Join(staging, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(filepath.Join(staging, "config")); err == nil && len(entries) > 0 {
		if err := os.Rename(filepath.Join(staging, "config"), filepath.Join(data, RestoreDirName)); err != nil {
			return nil, err
		}
		res.ConfigDir = filepath.Join(dir, RestoreDirName)
	}
	snapshot := filepath.Join(staging, filepath.FromSlash(backup.DatabaseName))
	dbInside := filepath.Dir(dbPath) == dir
	if man.Database == "sqlite" && dbInside {
		if err := os.Rename(snapshot, filepath.Join(data, filepath.Base(dbPath))); err != nil {
			return nil, err
		}
	}
	stamp := time.Now().UTC().Format("20060102T150405Z")
	if entries, err := os.ReadDir(dir); err == nil && len(entries) == 1 && entries[0].Name() == backup.LockName {
		os.Remove(filepath.Join(dir, backup.LockName)) // an empty directory: nothing to keep
		os.Remove(dir)
	}
	if _, err := os.Stat(dir); err == nil {
		aside := dir + ".replaced-" + stamp
		if err := os.Rename(dir, aside); err != nil {
			return nil, fmt.Errorf("restore: moving %s aside: %w", dir, err)
		}
		res.Replaced = append(res.Replaced, aside)
	}
	if err := os.Rename(data, dir); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if man.Database == "sqlite" && !dbInside {
		if hasFile(dbPath) {
			aside := dbPath + ".replaced-" + stamp
			if err := os.Rename(dbPath, aside); err != nil {
				return nil, fmt.Errorf("restore: moving %s aside: %w", dbPath, err)
			}
			res.Replaced = append(res.Replaced, aside)
		}
		if err := os.Rename(snapshot, dbPath); err != nil {
			return nil, fmt.Errorf("restore: placing the database at %s (it must be on the same file system as %s): %w", dbPath, dir, err)
		}
	}
	syncDir(filepath.Dir(dir))
	syncDir(filepath.Dir(dbPath))
	return res, nil
}

// checkRestoreTarget refuses a data directory a Mastio runs on, and one
// (or a database file) that is not empty unless force. The returned
// release keeps a running Mastio out until the restore is done.
func checkRestoreTarget(dir, dbPath string, force bool) (release func(), err error) {
	release = func() {}
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("restore: %w", err)
	default:
		inUse, rel, err := backup.InUse(dir)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if inUse {
			return nil, fmt.Errorf("restore: %s is in use by a running Mastio: stop it (caddy stop) and restore again", dir)
		}
		release = rel
		nonEmpty := false
		for _, e := range entries {
			if e.Name() != backup.LockName {
				nonEmpty = true
			}
		}
		if nonEmpty && !force {
			release()
			return nil, fmt.Errorf("restore: %s is not empty; restore into a new directory, or give --force to move it aside "+
				"(to %s.replaced-<time>) and restore in its place", dir, dir)
		}
	}
	if filepath.Dir(dbPath) != dir && hasFile(dbPath) && !force {
		release()
		return nil, fmt.Errorf("restore: the database %s exists; give --force to move it aside and restore in its place", dbPath)
	}
	return release, nil
}

// checkRestored checks an extracted backup: its schema is one this
// binary knows, its Org CA is whole and the one its database was made
// with, and its audit chain verifies up to the head the manifest names.
func checkRestored(ctx context.Context, staging string, man *backup.Manifest) (audit.VerifyResult, error) {
	var none audit.VerifyResult
	latest := sqlite.LatestVersion()
	if man.Database == "postgres" {
		latest = postgres.LatestVersion()
	}
	if man.SchemaVersion > latest {
		return none, &backup.Error{Msg: fmt.Sprintf("the backup's database is at schema version %d, this caddy-mastio knows up to %d: "+
			"restore it with the release that took it (%s) or a newer one", man.SchemaVersion, latest, man.Version)}
	}
	pkiDir := filepath.Join(staging, "data", "pki")
	var root *x509.Certificate
	if man.CAKeys == "file" {
		// The keys are in the backup: the CA must load whole.
		ca, created, err := pki.Prepare(pki.Config{Dir: pkiDir, Keys: pki.FileKeyStore{Dir: pkiDir}})
		switch {
		case err != nil:
			return none, &backup.Error{Msg: "the backup's Org CA cannot be loaded: " + err.Error()}
		case created.Root:
			return none, &backup.Error{Msg: "the backup holds no Org CA"}
		}
		root = ca.Root()
	} else {
		// The keys stay in their store (sealed in the database, Vault, an
		// HSM): the certificate must still be the manifest's.
		var err error
		if root, err = pki.ReadRoot(pkiDir); err != nil {
			return none, &backup.Error{Msg: "the backup holds no Org CA certificate: " + err.Error()}
		}
	}
	if sum := pki.Fingerprint(root); sum != man.RootSHA256 {
		return none, &backup.Error{Msg: fmt.Sprintf("the backup's Org CA is %s, its manifest says %s", sum, man.RootSHA256)}
	}
	if man.Database == "postgres" {
		return none, nil // pg_dump holds the database
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	db := filepath.Join(staging, filepath.FromSlash(backup.DatabaseName))
	facts, version, err := sqlite.Peek(ctx, db, cfgOrgID, cfgRootSHA256)
	if err != nil {
		return none, &backup.Error{Msg: "the backup's database cannot be read: " + err.Error()}
	}
	if version != man.SchemaVersion || facts[cfgRootSHA256] != man.RootSHA256 || facts[cfgOrgID] != man.OrgID {
		return none, &backup.Error{Msg: fmt.Sprintf("the backup's database (schema %d, Org CA %s, org %q) is not the one its manifest names "+
			"(schema %d, Org CA %s, org %q)", version, facts[cfgRootSHA256], facts[cfgOrgID], man.SchemaVersion, man.RootSHA256, man.OrgID)}
	}
	ro, err := sqlite.OpenReadOnly(db)
	if err != nil {
		return none, err
	}
	defer ro.Close()
	res, err := audit.Verify(ctx, ro, 1, 0)
	if err != nil {
		return res, &backup.Error{Msg: "the backup's audit chain cannot be read: " + err.Error()}
	}
	if !res.OK() {
		return res, &backup.Error{Msg: fmt.Sprintf("the backup's audit chain is broken at seq %d: %s", res.FirstBad, res.Reason)}
	}
	if res.To != man.AuditLastSeq || (man.AuditLastSeq > 0 && hex.EncodeToString(res.HeadHash) != man.AuditLastHash) {
		return res, &backup.Error{Msg: fmt.Sprintf("the backup's audit chain ends at seq %d (%x), its manifest says seq %d (%s)",
			res.To, res.HeadHash, man.AuditLastSeq, man.AuditLastHash)}
	}
	if res.Anchor.Seq > 0 {
		if err := audit.VerifyAnchor(res.Anchor, roots); err != nil {
			return res, &backup.Error{Msg: fmt.Sprintf("the backup's archive anchor at seq %d does not verify: %v", res.Anchor.Seq, err)}
		}
	}
	return res, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
