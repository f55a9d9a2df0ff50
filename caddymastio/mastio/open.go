package mastio

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// The state of a data location comes up in two steps, so that checking a
// configuration (caddy validate, which provisions it) writes nothing:
//
//   - Prepare, at Provision, reads: the data directory must be usable,
//     the Org CA is loaded (or, on a first start, generated in memory), the
//     org id is read, and the database and the CA must belong together.
//     What other modules need while they are provisioned (the CA for the
//     TLS trust pool, the org id) is ready then.
//   - Open, at Start or on the first request or handshake that comes
//     first, writes and opens the rest: the data directory, the CA files,
//     the database, the audit chain, the signing keys, the registry.

// Prepare reads what provisioning a configuration needs, creating
// nothing. orgHint is the configured org id (may be empty); it only
// matters when the CA is created. logger is the data location's (kept for
// its background work).
func Prepare(loc Location, orgHint string, logger *zap.Logger) (*Shared, error) {
	ctx := context.Background()
	dataDir, db := loc.DataDir, loc.Database
	if err := CheckDataDir(dataDir); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dataDir, err)
	}
	if loc.KEK != nil {
		return prepareShared(ctx, loc, orgHint, logger)
	}
	pkiDir := filepath.Join(dataDir, "pki")
	rootPath := filepath.Join(pkiDir, pki.RootCertFile)
	dbPath := db.Location()
	known, haveDB, err := db.peek(ctx, cfgRootSHA256, cfgOrgID)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	haveCA := hasFile(rootPath)
	if haveCA && !haveDB {
		return nil, lostDatabaseError(dataDir, dbPath)
	}
	knownRoot, haveRoot := known[cfgRootSHA256]
	switch {
	case haveRoot && !haveCA:
		return nil, fmt.Errorf("the Org CA (%s) is missing but the database %s was created with Org CA sha256 %s: "+
			"restore %s from the backup taken with the database; refusing to generate a new CA, "+
			"which would orphan every enrolled agent", rootPath, dbPath, knownRoot, pkiDir)
	case !haveRoot && haveCA:
		return nil, lostDatabaseError(dataDir, dbPath) // a database file, but not this installation's
	}
	ca, created, err := pki.Prepare(pki.Config{Dir: pkiDir, Keys: loc.caKeys(pki.FileKeyStore{Dir: pkiDir}), Org: orgHint})
	if err != nil {
		return nil, fmt.Errorf("org CA: %w", err)
	}
	if rootSum := pki.Fingerprint(ca.Root()); haveRoot && rootSum != knownRoot {
		return nil, fmt.Errorf("the Org CA in %s (sha256 %s) is not the one the database %s was created with (sha256 %s): "+
			"the data directory mixes files from different installations; restore the database and %s from the same backup",
			pkiDir, rootSum, dbPath, knownRoot, pkiDir)
	}
	orgID := known[cfgOrgID]
	if orgID == "" {
		if orgID = orgHint; orgID == "" {
			orgID = pki.DeriveOrgID(ca.Root())
		}
	}
	s := &Shared{caKeys: loc.CAKeys, redisURL: loc.Redis, redisDegrade: loc.RedisDegrade, dataDir: dataDir, database: db, dbPath: dbPath, ca: ca, caCreated: created, orgID: orgID,
		keyStore: pki.FileKeyStore{Dir: filepath.Join(dataDir, "keys")}, limiters: map[string]ratelimit.Allower{},
		lastReady: map[string]string{}}
	s.logger.Store(logger)
	return s, nil
}

// Open writes and opens everything the Mastio runs on, once; a failure is
// kept (the location is unusable: Start fails, requests get 503).
func (s *Shared) Open() error {
	s.openOnce.Do(func() {
		if s.openErr = s.openAll(); s.openErr != nil {
			s.Close()
		}
	})
	return s.openErr
}

func (s *Shared) openAll() error {
	ctx := context.Background()
	if err := ensureDataDir(s.dataDir, s.log()); err != nil {
		return err
	}
	release, err := backup.MarkInUse(s.dataDir)
	if err != nil {
		return err
	}
	s.OnClose(release)
	if err := s.ca.Persist(); err != nil {
		return fmt.Errorf("org CA: %w", err)
	}
	if err := s.ca.KeysErr(); err != nil {
		s.log().Error("the Org CA's key store is unavailable: serving enrolled agents, issuing nothing until it answers",
			zap.String("key_store", s.ca.KeyStore()), zap.Error(err))
	}
	if s.pendingSecret != "" {
		if err := writeAdminSecret(s.dataDir, s.pendingSecret); err != nil {
			return err
		}
		s.log().Warn("no admin_secret configured: generated one; read it from the file (and set admin_secret for production)",
			zap.String("file", filepath.Join(s.dataDir, "admin-secret")))
	}
	st := s.store // opened already by a shared location's Prepare
	if st == nil {
		var err error
		if st, err = s.database.open(ctx); err != nil {
			return fmt.Errorf("database: %w", err)
		}
		s.store = st
	}
	s.audit = audit.Open(st, audit.Options{Observe: observeCommit})
	ca := s.ca
	rootSum := pki.Fingerprint(ca.Root())
	if stored, err := initConfig(ctx, st, cfgRootSHA256, rootSum); err != nil {
		return err
	} else if stored != rootSum {
		return fmt.Errorf("the Org CA (sha256 %s) is not the one the database %s was created with (sha256 %s)", rootSum, s.dbPath, stored)
	}
	if org, err := initConfig(ctx, st, cfgOrgID, s.orgID); err != nil {
		return err
	} else if org != s.orgID {
		return fmt.Errorf("the database %s holds org id %q, %q was expected", s.dbPath, org, s.orgID)
	}
	if err := s.auditCreatedCA(ctx, rootSum); err != nil {
		return err
	}
	ring, newKey, err := token.OpenKeyRing(ctx, st, s.audit, s.keyStore)
	if err != nil {
		return fmt.Errorf("signing keys: %w", err)
	}
	s.keys = ring
	if s.registry, err = registry.Open(ctx, registry.Config{Store: st, Audit: s.audit, CA: ca, Org: s.orgID, Shared: s.shared}); err != nil {
		return fmt.Errorf("agent registry: %w", err)
	}
	s.tokens = token.NewVerifier(ring, 100_000)
	s.inflight = newInflight(s.registry)
	s.registry.OnChange(s.agentWatch.Notify)
	s.refusals = newRefusalAudit()
	if err := s.loadPolicy(ctx); err != nil {
		return err
	}
	if err := s.openReplayProtection(ctx); err != nil {
		return err
	}
	s.adminFailLimit = ratelimit.New(10, time.Minute, 10, 100_000)
	s.adminFailGlobal = ratelimit.New(adminFailuresPerMinute, time.Minute, adminFailuresPerMinute, 1)
	if newKey != nil {
		s.log().Info("created the first token signing key", zap.String("kid", newKey.Kid))
	}
	s.stop = make(chan struct{})
	feedCtx, stopFeed := context.WithCancel(context.Background())
	s.stopFeed = stopFeed
	s.background.Add(3)
	go func() { defer s.background.Done(); s.maintain() }()
	go func() { defer s.background.Done(); s.watchChain() }()
	go func() { defer s.background.Done(); s.followChanges(feedCtx) }()
	return nil
}

// auditCreatedCA records the CA material prepareState generated.
func (s *Shared) auditCreatedCA(ctx context.Context, rootSum string) error {
	ca := s.ca
	switch {
	case s.caCreated.Root:
		s.log().Info("created Org CA", zap.String("org_id", s.orgID), zap.String("root_sha256", rootSum),
			zap.String("root_cert", filepath.Join(s.dataDir, "pki", pki.RootCertFile)))
		_, err := s.audit.Append(ctx, audit.Event{Type: "pki.org_ca_created", Actor: "system", Subject: s.orgID,
			Details: map[string]any{
				"root_sha256":         rootSum,
				"root_not_after":      ca.Root().NotAfter.UTC().Format("2006-01-02T15:04:05Z"),
				"intermediate_sha256": pki.Fingerprint(ca.Intermediate()),
				"key_store":           strings.SplitN(s.ca.KeyStore(), ":", 2)[0],
			}})
		return err
	case s.caCreated.Intermediate:
		s.log().Info("created Mastio intermediate CA", zap.String("intermediate_sha256", pki.Fingerprint(ca.Intermediate())))
		_, err := s.audit.Append(ctx, audit.Event{Type: "pki.intermediate_created", Actor: "system", Subject: s.orgID,
			Details: map[string]any{
				"intermediate_sha256":    pki.Fingerprint(ca.Intermediate()),
				"intermediate_not_after": ca.Intermediate().NotAfter.UTC().Format("2006-01-02T15:04:05Z"),
			}})
		return err
	}
	return nil
}

// openReplayProtection sets up the DPoP replay cache, the nonces and the
// login-challenge key. The nonce key is shared by everything that shares
// the database; nonces and challenges are also bound to the replay cache's
// epoch: after a restart those issued before are refused, and with them
// every proof and challenge the old cache remembered.
func (s *Shared) openReplayProtection(ctx context.Context) error {
	var err error
	if s.replay, err = s.openReplayCache(ctx); err != nil {
		return err
	}
	fresh := make([]byte, 32)
	if _, err := rand.Read(fresh); err != nil {
		return err
	}
	keyB64, err := initConfig(ctx, s.store, "dpop_nonce_key", base64.RawStdEncoding.EncodeToString(fresh))
	if err != nil {
		return err
	}
	nonceKey, err := base64.RawStdEncoding.DecodeString(keyB64)
	if err != nil || len(nonceKey) < 32 {
		return fmt.Errorf("config dpop_nonce_key is damaged")
	}
	s.bindEpoch(nonceKey, s.replay.Epoch())
	if s.redis != nil {
		s.redis.OnEpoch(func(epoch []byte) {
			s.log().Warn("redis lost the replay cache: a new epoch; nonces and challenges issued before are refused")
			s.bindEpoch(nonceKey, epoch)
		})
	}
	return nil
}

// initConfig fixes a first-start fact: value is stored under key unless
// the key has one; the value stored is returned.
func initConfig(ctx context.Context, st store.Store, key, value string) (stored string, err error) {
	err = st.Update(ctx, func(tx store.Tx) error {
		stored, err = tx.InitConfig(ctx, key, value)
		return err
	})
	return stored, err
}

// hasFile reports a regular file that is not empty (an empty database
// file is as good as none).
func hasFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
}

// lostDatabaseError refuses to start a new database beside an existing
// Org CA: it would bring a new signing key and a new audit chain and
// orphan every enrolled agent, silently.
func lostDatabaseError(dataDir, dbPath string) error {
	return fmt.Errorf("the database %s is missing or empty, but %s holds an Org CA: restore the database from the backup "+
		"taken with the Org CA (and its -wal file, if any); refusing to start a new database, which would orphan every "+
		"enrolled agent and begin a new audit chain. To start over with an empty database that keeps this Org CA "+
		"(every agent must enroll again): caddy mastio init-database --data-dir %s --database %s",
		dbPath, filepath.Join(dataDir, "pki"), dataDir, dbPath)
}

// ensureDataDir creates dir with mode 0700 and checks that files can be
// created in it.
func ensureDataDir(dir string, logger *zap.Logger) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("data_dir %s: cannot create it: %w", dir, err)
		}
	case err != nil:
		return fmt.Errorf("data_dir %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("data_dir %s exists and is not a directory", dir)
	default:
		if fi.Mode().Perm()&0o077 != 0 && logger != nil {
			logger.Warn("data_dir is accessible to other users; it holds the Org CA keys (chmod 700 it)",
				zap.String("data_dir", dir), zap.String("mode", fmt.Sprintf("%04o", fi.Mode().Perm())))
		}
	}
	f, err := os.CreateTemp(dir, ".write-test-*")
	if err != nil {
		return fmt.Errorf("data_dir %s is not writable: %w", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// CheckDataDir is what can be known of a data directory without creating
// anything: the directory, or its nearest existing ancestor, must be a
// writable directory. It runs when the Caddyfile is adapted and when a
// config is provisioned.
func CheckDataDir(dir string) error {
	if strings.Contains(dir, "{") {
		return nil // a placeholder; resolved at provision time
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", p)
			}
			if err := writableDir(p); err != nil {
				return fmt.Errorf("%s is not writable: %w", p, err)
			}
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return err
		}
		if filepath.Dir(p) == p {
			return nil
		}
	}
}

// AdminSecretFromFile returns the admin secret in dataDir/admin-secret or,
// when there is none, one generated for this state: it is written (0600)
// when the state opens, so that checking a configuration writes nothing.
func (s *Shared) AdminSecretFromFile() (secret string, created bool, err error) {
	path := filepath.Join(s.dataDir, "admin-secret")
	if data, err := os.ReadFile(path); err == nil {
		fi, _ := os.Stat(path)
		if fi != nil && fi.Mode().Perm()&0o077 != 0 {
			return "", false, fmt.Errorf("%s has mode %04o: it must be 0600 (chmod 600 %s)", path, fi.Mode().Perm(), path)
		}
		return strings.TrimSpace(string(data)), false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, err
	}
	s.secretMu.Lock()
	defer s.secretMu.Unlock()
	if s.pendingSecret == "" {
		buf := make([]byte, 32)
		if _, err := rand.Read(buf); err != nil {
			return "", false, err
		}
		s.pendingSecret = hex.EncodeToString(buf)
	}
	return s.pendingSecret, true, nil
}

// writeAdminSecret creates dataDir/admin-secret (0600) with secret; if it
// appeared meanwhile with another secret, the configs provisioned with
// this one are wrong: refuse.
func writeAdminSecret(dataDir, secret string) error {
	path := filepath.Join(dataDir, "admin-secret")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		if data, rerr := os.ReadFile(path); rerr == nil && strings.TrimSpace(string(data)) == secret {
			return nil
		}
		return fmt.Errorf("%s was created by another process meanwhile: start again to use it", path)
	}
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(secret + "\n"); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
