package mastio

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop/redisreplay"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit/redislimit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
	"github.com/caddy-mastio/caddy-mastio/internal/watch"
)

// adminFailuresPerMinute bounds the failed admin secret attempts audited
// in a minute from all addresses together (10 a minute per address).
const adminFailuresPerMinute = 60

// Config keys fixed at first start.
const (
	cfgOrgID      = "org_id"
	cfgRootSHA256 = "org_ca_sha256"
)

// Shared is the state of one data location: the store, the audit writer,
// the Org CA, the signing key ring, the registry and the caches a reload
// must not reset. Open it once; every configuration's Mastio shares it.
type Shared struct {
	dataDir  string
	database Database
	shared   bool         // several instances share the database (sealed material)
	kek      []byte       // a shared deployment's key-encryption key (for backups)
	caKeys   pki.KeyStore // a configured CA key store (Location.CAKeys), closed with the Shared
	// adminSecret is a shared deployment's admin secret (sharedsecret.go).
	adminSecret atomic.Pointer[Secret]
	dbPath      string // the database's Location: never a password
	orgID       string
	// logger is the logger of the configuration in force (set again when
	// a configuration starts): background work logs through it.
	logger atomic.Pointer[zap.Logger]

	store    store.Store
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
	limiters   map[string]ratelimit.Allower
	// The MCP servers registered through the admin API, once read.
	storedMu sync.Mutex
	stored   map[string]*Server
	// keyStore holds secrets the Mastio uses (signing keys, upstream
	// credentials): data/keys, files 0600.
	keyStore pki.KeyStore
	nonces   *dpop.Nonces
	replay   dpop.ReplayCache
	// challengeKey signs login challenges (stateless; single use through
	// the replay cache).
	challengeKey atomic.Pointer[[]byte]
	// redis is the shared replay cache, when the deployment has one.
	redisURL     string
	redisDegrade bool
	redis        *redisreplay.Cache

	// Per-address limits on anonymous and failing requests. They live here
	// so that a reload does not reset them.
	adminFailLimit  *ratelimit.Limiter
	adminFailGlobal *ratelimit.Limiter
	adminUnaudited  atomic.Int64 // failures refused by adminFailGlobal since the last audited one
	// inflight ends an agent's requests when its credentials are withdrawn.
	inflight *inflight
	// sessions remembers which agent opened each upstream MCP session.
	sessions sessionOwners
	// refusals limits the audited refusals per agent.
	refusals *refusalAudit

	// What prepareState found or generated in memory, and open writes.
	caCreated     pki.Created
	secretMu      sync.Mutex
	pendingSecret string // a generated admin secret not yet written
	openOnce      sync.Once
	openErr       error

	startOnce  sync.Once
	stop       chan struct{}
	background sync.WaitGroup // maintain, watchChain, followChanges
	stopFeed   context.CancelFunc

	readyMu   sync.Mutex
	lastReady map[string]string // check -> last reported value, to log changes only

	onCloseMu sync.Mutex
	onClose   []func()

	serverWatch watch.Set[string] // a server's name, when it is removed or replaced
	policyWatch watch.Set[struct{}]
	agentWatch  watch.Set[string] // an agent's id, when its credentials change

	workload       workloadCerts   // the Mastio's own certificates (workload.go)
	lastCheckpoint atomic.Int64    // seq of the last audit.checkpoint row this process wrote
	chain          chainWatch      // the background verifier (chainwatch.go)
	consoles       consoleSessions // the dashboard's signed-in operators (console.go)
	inForce        atomic.Pointer[Mastio]
}

// OnAgentChange registers fn, called with an agent's id once a change of
// its credentials is in force (revoked, certificate rotated): a surface
// that serves the agent outside requests ends that; remove unregisters
// it.
func (s *Shared) OnAgentChange(fn func(agentID string)) (remove func()) { return s.agentWatch.Add(fn) }

func (s *Shared) log() *zap.Logger { return s.logger.Load() }

// maintain expires overdue enrollment sessions and ended certificate grace
// periods once a minute (both are also enforced when they are looked at).
func (s *Shared) maintain() {
	defer func() {
		if err := recover(); err != nil {
			s.log().Error("maintenance loop panicked", zap.Any("error", err))
		}
	}()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	lastCheckpoint := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx := context.Background()
			if n, err := s.registry.ExpireEnrollments(ctx); err != nil {
				s.log().Error("expiring enrollment sessions", zap.Error(err))
			} else if n > 0 {
				s.log().Info("expired enrollment sessions", zap.Int("count", n))
			}
			if err := s.keys.Reload(ctx); err != nil {
				s.log().Error("reloading signing keys", zap.Error(err))
			}
			if err := s.store.Update(ctx, func(tx store.Tx) error { _, err := tx.ForgetUsed(ctx, time.Now()); return err }); err != nil {
				s.log().Error("forgetting expired single-use credentials", zap.Error(err))
			}
			if n, err := s.registry.ExpireGrace(ctx); err != nil {
				s.log().Error("ending certificate grace periods", zap.Error(err))
			} else if n > 0 {
				s.log().Info("ended certificate grace periods", zap.Int("count", n))
			}
			if m := s.inForce.Load(); m != nil && time.Since(lastCheckpoint) >= m.checkpointInterval() {
				lastCheckpoint = time.Now()
				if err := m.WriteCheckpoint(ctx, "interval"); err != nil {
					s.log().Error("writing an audit checkpoint", zap.Error(err))
				}
			}
		}
	}
}

// Limiter returns the limiter for key, creating it (n events per period,
// burst) on first use: in Redis, shared by every instance, when the
// deployment has one, else in memory. Limiters outlive config reloads.
func (s *Shared) Limiter(key string, n int, period time.Duration, burst int) ratelimit.Allower {
	s.limitersMu.Lock()
	defer s.limitersMu.Unlock()
	k := fmt.Sprintf("%s|%d|%s|%d", key, n, period, burst)
	l, ok := s.limiters[k]
	if !ok {
		local := ratelimit.New(n, period, burst, 100_000)
		l = local
		if s.redis != nil {
			rl := redislimit.New(s.redis.Client(), "mastio:"+s.orgID+":rl:"+k+":", n, period, burst)
			rl.Unavailable = func(key string, err error) (bool, time.Duration) {
				if s.redisDegrade {
					redisDegraded.Inc()
					return local.Allow(key)
				}
				return false, 5 * time.Second // closed: nothing unchecked passes
			}
			l = rl
		}
		s.limiters[k] = l
	}
	return l
}

// Close stops what Open started and closes what it opened (flushing the
// audit writer): the last configuration using the location is gone.
func (s *Shared) Close() error {
	if r := reported.Load(); r != nil && r.Shared == s {
		reported.CompareAndSwap(r, nil)
	}
	if s.stop != nil {
		close(s.stop)
		s.stopFeed()
		s.background.Wait()
		s.stop = nil
	}
	s.onCloseMu.Lock()
	fns := s.onClose
	s.onClose = nil
	s.onCloseMu.Unlock()
	for _, fn := range fns {
		fn()
	}
	if s.redis != nil {
		s.redis.Close()
	}
	if c, ok := s.caKeys.(io.Closer); ok {
		c.Close()
	}
	if s.audit != nil {
		s.audit.Close()
		s.audit = nil
	}
	if s.store != nil {
		err := s.store.Close()
		s.store = nil
		return err
	}
	return nil
}

// OnClose registers fn to run when the Shared closes (a surface's own
// connections, say).
func (s *Shared) OnClose(fn func()) {
	s.onCloseMu.Lock()
	s.onClose = append(s.onClose, fn)
	s.onCloseMu.Unlock()
}
