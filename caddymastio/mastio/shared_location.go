package mastio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Location is where a Mastio keeps its state: its data directory, its
// database and, for a Postgres database several instances share, the key
// that seals what they share (the Org CA's and intermediate's keys, the
// signing keys, upstream credentials).
type Location struct {
	DataDir  string
	Database Database
	KEK      []byte // nil: nothing shared, keys stay in DataDir
	// CAKeys keeps the Org CA's keys (a Vault, an HSM); nil: files in
	// DataDir/pki, or sealed in the database with a KEK. The Shared closes
	// it (if it is an io.Closer) when it closes.
	CAKeys pki.KeyStore
	// Redis is the URL of the Redis the instances share for replay
	// protection ("" for this process's memory); RedisDegrade says what
	// to do while it cannot be reached (false: refuse, 503).
	Redis        string
	RedisDegrade bool
}

// prepareShared prepares an instance of a shared deployment: under the
// database's exclusive lock it takes the Org CA the first instance created
// (its certificates written into this data directory, its keys read from
// the database, sealed), or, as the first instance, creates it and seals
// it into the database. Two instances starting at once make one CA. Unlike
// Prepare's embedded case, this writes (the schema, the first CA, the
// certificates' copies): the database is the source of truth.
func prepareShared(ctx context.Context, loc Location, orgHint string, logger *zap.Logger) (*Shared, error) {
	if !loc.Database.sharable() {
		return nil, errors.New("key_encryption_key_file seals what instances share through a Postgres database; " +
			"with a SQLite database (one instance) remove it")
	}
	sealer, err := newSealer(loc.KEK)
	if err != nil {
		return nil, err
	}
	st, err := loc.Database.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	pkiDir := filepath.Join(loc.DataDir, "pki")
	var ca *pki.CA
	var created pki.Created
	known := map[string]string{}
	err = st.(store.Exclusive).Exclusive(ctx, func() error {
		sealed, err := st.SealedFiles(ctx, "pki/")
		if err != nil {
			return err
		}
		if err := os.MkdirAll(pkiDir, 0o700); err != nil {
			return err
		}
		for name, b := range sealed {
			if !strings.HasSuffix(name, ".crt") {
				continue // keys stay in the database
			}
			plain, err := sealer.open(name, b)
			if err != nil {
				return err
			}
			// Atomically, and only when it changed: a running instance's
			// operator (or a peer reading the root) must never see it empty.
			path := filepath.Join(pkiDir, strings.TrimPrefix(name, "pki/"))
			if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, plain) {
				continue
			}
			if err := pki.WriteFileAtomic(path, plain, 0o644); err != nil {
				return err
			}
		}
		for _, k := range []string{cfgRootSHA256, cfgOrgID} {
			if v, ok, err := st.Config(ctx, k); err != nil {
				return err
			} else if ok {
				known[k] = v
			}
		}
		if len(sealed) == 0 && known[cfgRootSHA256] != "" {
			return fmt.Errorf("the database %s holds an installation (Org CA sha256 %s) but no sealed Org CA: it was not made "+
				"by instances sharing it; run it without key_encryption_key_file", loc.Database.Location(), known[cfgRootSHA256])
		}
		if ca, created, err = pki.Prepare(pki.Config{Dir: pkiDir, Keys: loc.caKeys(sealedKeyStore{st: st, sealer: sealer, prefix: "pki/"}),
			Org: orgHint}); err != nil {
			return fmt.Errorf("org CA: %w", err)
		}
		if sum := pki.Fingerprint(ca.Root()); known[cfgRootSHA256] != "" && sum != known[cfgRootSHA256] {
			return fmt.Errorf("the Org CA in %s (sha256 %s) is not the one the shared database holds (sha256 %s)", pkiDir, sum, known[cfgRootSHA256])
		}
		if err := ca.Persist(); err != nil {
			return fmt.Errorf("org CA: %w", err)
		}
		// Publish the certificates (a first start's, or a renewed
		// intermediate) for the instances that start next.
		files, _ := filepath.Glob(filepath.Join(pkiDir, "*.crt"))
		return st.Update(ctx, func(tx store.Tx) error {
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					return err
				}
				name := "pki/" + filepath.Base(f)
				if err := tx.PutSealedFile(ctx, name, sealer.seal(name, data)); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		st.Close()
		return nil, err
	}
	orgID := known[cfgOrgID]
	if orgID == "" {
		if orgID = orgHint; orgID == "" {
			orgID = pki.DeriveOrgID(ca.Root())
		}
	}
	s := &Shared{dataDir: loc.DataDir, database: loc.Database, dbPath: loc.Database.Location(), store: st, ca: ca, caCreated: created,
		orgID: orgID, keyStore: sealedKeyStore{st: st, sealer: sealer, prefix: "keys/"}, limiters: map[string]ratelimit.Allower{},
		lastReady: map[string]string{}, shared: true, redisURL: loc.Redis, redisDegrade: loc.RedisDegrade, kek: loc.KEK, caKeys: loc.CAKeys}
	s.logger.Store(logger)
	return s, nil
}

// caKeys is the configured CA key store, or def.
func (loc Location) caKeys(def pki.KeyStore) pki.KeyStore {
	if loc.CAKeys != nil {
		return loc.CAKeys
	}
	return def
}
