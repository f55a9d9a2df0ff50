package caddymastio

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// adminFailuresPerMinute bounds the failed admin secret attempts audited
// in a minute from all addresses together (10 a minute per address).
const adminFailuresPerMinute = 60

// states holds the long-lived state of every data location in use, keyed
// by the absolute database path. A config reload provisions a new App
// while the old one still serves; both get the same *state, so there is
// only ever one database handle and one audit writer per file.
var states = caddy.NewUsagePool()

// Config keys fixed at first start.
const (
	cfgOrgID      = "org_id"
	cfgRootSHA256 = "org_ca_sha256"
)

// state is what survives config reloads: the store, the audit writer, the
// Org CA and the signing key ring.
type state struct {
	dataDir string
	dbPath  string
	orgID   string
	logger  *zap.Logger

	store    *store.Store
	audit    *audit.Log
	ca       *pki.CA
	keys     *token.KeyRing
	registry *registry.Registry
	tokens   *token.Verifier
	policy   atomic.Pointer[storedPolicy]
	// policyMu serializes changes to the stored policy, so that the rules
	// in memory are those of the last commit and a binding's
	// read-modify-write loses no concurrent change.
	policyMu sync.Mutex
	// limiters are the MCP rate limiters, by route and scope.
	limitersMu sync.Mutex
	limiters   map[string]*ratelimit.Limiter
	sessions   mcpSessions
	upstreams  upstreamPool
	// The MCP servers registered through the admin API, once read.
	storedMu sync.Mutex
	stored   map[string]*MCPServer
	// keyStore holds secrets the Mastio uses (signing keys, upstream
	// credentials): data/keys, files 0600.
	keyStore pki.KeyStore
	nonces   *dpop.Nonces
	replay   dpop.ReplayCache
	// challengeKey signs login challenges (stateless; single use through
	// the replay cache).
	challengeKey []byte

	// Per-address limits on anonymous and failing requests. They live here
	// so that a reload does not reset them.
	adminFailLimit  *ratelimit.Limiter
	adminFailGlobal *ratelimit.Limiter
	// inflight ends an agent's requests when its credentials are withdrawn.
	inflight *inflight
	// refusals limits the audited refusals per agent.
	refusals *refusalAudit

	startOnce sync.Once
	stop      chan struct{}
	stopped   chan struct{}

	readyMu   sync.Mutex
	lastReady map[string]string // check -> last reported value, to log changes only
}

// openState creates the data directory and everything in it on first use
// and loads it afterwards. orgHint is the configured org id (may be empty)
// and only matters when the CA is created.
func openState(dataDir, dbPath, orgHint string, logger *zap.Logger) (*state, error) {
	ctx := context.Background()
	if err := ensureDataDir(dataDir, logger); err != nil {
		return nil, err
	}
	pkiDir := filepath.Join(dataDir, "pki")
	if hasFile(filepath.Join(pkiDir, pki.RootCertFile)) && !hasFile(dbPath) {
		return nil, lostDatabaseError(dataDir, dbPath)
	}
	st, err := store.Open(ctx, dbPath)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	s := &state{dataDir: dataDir, dbPath: dbPath, logger: logger, store: st, lastReady: map[string]string{}}
	ok := false
	defer func() {
		if !ok {
			s.Destruct()
		}
	}()
	s.audit = audit.Open(st.DB(), audit.Options{BeforeCommit: st.CheckFile})

	knownRoot, haveRoot, err := st.GetConfig(ctx, cfgRootSHA256)
	if err != nil {
		return nil, err
	}
	if !haveRoot && hasFile(filepath.Join(pkiDir, pki.RootCertFile)) {
		return nil, lostDatabaseError(dataDir, dbPath) // a database file, but not this installation's
	}
	if haveRoot {
		if _, err := os.Stat(filepath.Join(pkiDir, pki.RootCertFile)); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("the Org CA (%s) is missing but the database %s was created with Org CA sha256 %s: "+
				"restore %s from the backup taken with the database; refusing to generate a new CA, "+
				"which would orphan every enrolled agent", filepath.Join(pkiDir, pki.RootCertFile), dbPath, knownRoot, pkiDir)
		}
	}
	ca, created, err := pki.LoadOrCreate(pki.Config{Dir: pkiDir, Keys: pki.FileKeyStore{Dir: pkiDir}, Org: orgHint})
	if err != nil {
		return nil, fmt.Errorf("org CA: %w", err)
	}
	s.ca = ca
	rootSum := pki.Fingerprint(ca.Root())
	if stored, err := st.InitConfig(ctx, cfgRootSHA256, rootSum); err != nil {
		return nil, err
	} else if stored != rootSum {
		return nil, fmt.Errorf("the Org CA in %s (sha256 %s) is not the one the database %s was created with (sha256 %s): "+
			"the data directory mixes files from different installations; restore the database and %s from the same backup",
			pkiDir, rootSum, dbPath, stored, pkiDir)
	}
	derived := orgHint
	if derived == "" {
		derived = pki.DeriveOrgID(ca.Root())
	}
	if s.orgID, err = st.InitConfig(ctx, cfgOrgID, derived); err != nil {
		return nil, err
	}
	if created.Root {
		logger.Info("created Org CA", zap.String("org_id", s.orgID), zap.String("root_sha256", rootSum),
			zap.String("root_cert", filepath.Join(pkiDir, pki.RootCertFile)))
		if _, err := s.audit.Append(ctx, audit.Event{Type: "pki.org_ca_created", Actor: "system", Subject: s.orgID,
			Details: map[string]any{
				"root_sha256":         rootSum,
				"root_not_after":      ca.Root().NotAfter.UTC().Format("2006-01-02T15:04:05Z"),
				"intermediate_sha256": pki.Fingerprint(ca.Intermediate()),
				"key_store":           "file",
			}}); err != nil {
			return nil, err
		}
	} else if created.Intermediate {
		logger.Info("created Mastio intermediate CA", zap.String("intermediate_sha256", pki.Fingerprint(ca.Intermediate())))
		if _, err := s.audit.Append(ctx, audit.Event{Type: "pki.intermediate_created", Actor: "system", Subject: s.orgID,
			Details: map[string]any{
				"intermediate_sha256":    pki.Fingerprint(ca.Intermediate()),
				"intermediate_not_after": ca.Intermediate().NotAfter.UTC().Format("2006-01-02T15:04:05Z"),
			}}); err != nil {
			return nil, err
		}
	}

	s.keyStore = pki.FileKeyStore{Dir: filepath.Join(dataDir, "keys")}
	ring, newKey, err := token.OpenKeyRing(ctx, st.DB(), s.keyStore)
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	s.keys = ring
	if s.registry, err = registry.Open(ctx, registry.Config{DB: st.DB(), Audit: s.audit, CA: ca, Org: s.orgID,
		BeforeCommit: st.CheckFile}); err != nil {
		return nil, fmt.Errorf("agent registry: %w", err)
	}
	s.tokens = token.NewVerifier(ring, 100_000)
	s.inflight = newInflight(s.registry)
	s.refusals = newRefusalAudit()
	s.limiters = map[string]*ratelimit.Limiter{}
	if err := s.loadPolicy(ctx); err != nil {
		return nil, err
	}
	s.replay = dpop.NewMemoryCache(dpop.DefaultReplayCapacity)
	// The DPoP nonce key is shared by everything that shares the database,
	// so every instance issues and accepts the same nonces.
	fresh := make([]byte, 32)
	if _, err := rand.Read(fresh); err != nil {
		return nil, err
	}
	keyB64, err := st.InitConfig(ctx, "dpop_nonce_key", base64.RawStdEncoding.EncodeToString(fresh))
	if err != nil {
		return nil, err
	}
	nonceKey, err := base64.RawStdEncoding.DecodeString(keyB64)
	if err != nil || len(nonceKey) < 32 {
		return nil, fmt.Errorf("config dpop_nonce_key is damaged")
	}
	// Nonces and login challenges are bound to the replay cache's epoch:
	// after a restart those issued before are refused, and with them every
	// proof and challenge the old cache remembered.
	s.nonces = dpop.NewNonces(nonceKey, dpop.DefaultNonceStep, s.replay.Epoch())
	mac := hmac.New(sha256.New, nonceKey)
	mac.Write([]byte("login-challenge key|"))
	mac.Write(s.replay.Epoch())
	s.challengeKey = mac.Sum(nil)
	s.adminFailLimit = ratelimit.New(10, time.Minute, 10, 100_000)
	s.adminFailGlobal = ratelimit.New(adminFailuresPerMinute, time.Minute, adminFailuresPerMinute, 1)
	if newKey != nil {
		if _, err := s.audit.Append(ctx, audit.Event{Type: "token.signing_key_created", Actor: "system", Subject: newKey.Kid,
			Details: map[string]any{"alg": newKey.Alg, "status": newKey.Status}}); err != nil {
			return nil, err
		}
	}
	s.stop, s.stopped = make(chan struct{}), make(chan struct{})
	go s.maintain()
	ok = true
	return s, nil
}

// maintain expires overdue enrollment sessions and ended certificate grace
// periods once a minute (both are also enforced when they are looked at).
func (s *state) maintain() {
	defer close(s.stopped)
	defer func() {
		if err := recover(); err != nil {
			s.logger.Error("maintenance loop panicked", zap.Any("error", err))
		}
	}()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx := context.Background()
			if n, err := s.registry.ExpireEnrollments(ctx); err != nil {
				s.logger.Error("expiring enrollment sessions", zap.Error(err))
			} else if n > 0 {
				s.logger.Info("expired enrollment sessions", zap.Int("count", n))
			}
			if err := s.keys.Reload(ctx); err != nil {
				s.logger.Error("reloading signing keys", zap.Error(err))
			}
			if _, err := s.store.PurgeUsed(ctx); err != nil {
				s.logger.Error("forgetting expired single-use credentials", zap.Error(err))
			}
			if n, err := s.registry.ExpireGrace(ctx); err != nil {
				s.logger.Error("ending certificate grace periods", zap.Error(err))
			} else if n > 0 {
				s.logger.Info("ended certificate grace periods", zap.Int("count", n))
			}
		}
	}
}

// limiter returns the shared limiter for key, creating it (n events per
// period, burst) on first use. Limiters outlive config reloads.
func (s *state) limiter(key string, n int, period time.Duration, burst int) *ratelimit.Limiter {
	s.limitersMu.Lock()
	defer s.limitersMu.Unlock()
	k := fmt.Sprintf("%s|%d|%s|%d", key, n, period, burst)
	l, ok := s.limiters[k]
	if !ok {
		l = ratelimit.New(n, period, burst, 100_000)
		s.limiters[k] = l
	}
	return l
}

// Destruct implements caddy.Destructor: the last config using this data
// location is gone, so flush the audit writer and close the database.
func (s *state) Destruct() error {
	if s.stop != nil {
		close(s.stop)
		<-s.stopped
	}
	s.upstreams.closeAll()
	if s.audit != nil {
		s.audit.Close()
	}
	if s.store != nil {
		return s.store.Close()
	}
	return nil
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

// checkDataDirSyntax is the part of ensureDataDir that can run while the
// Caddyfile is adapted, without creating anything: the nearest existing
// ancestor must be a writable directory.
func checkDataDirSyntax(dir string) error {
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

// generatedAdminSecret reads dataDir/admin-secret, creating it (0600, 32
// random bytes hex) on first use.
func generatedAdminSecret(dataDir string) (secret string, created bool, err error) {
	path := filepath.Join(dataDir, "admin-secret")
	if data, err := os.ReadFile(path); err == nil {
		fi, _ := os.Stat(path)
		if fi != nil && fi.Mode().Perm()&0o077 != 0 {
			return "", false, fmt.Errorf("%s has mode %04o: it must be 0600 (chmod 600 %s)", path, fi.Mode().Perm(), path)
		}
		return strings.TrimSpace(string(data)), false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, err
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", false, err
	}
	secret = hex.EncodeToString(buf)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return generatedAdminSecret(dataDir)
		}
		return "", false, fmt.Errorf("creating %s: %w", path, err)
	}
	defer f.Close()
	if _, err := f.WriteString(secret + "\n"); err != nil {
		return "", false, fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return "", false, fmt.Errorf("writing %s: %w", path, err)
	}
	return secret, true, nil
}

var _ caddy.Destructor = (*state)(nil)
