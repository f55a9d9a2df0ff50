// Package redisreplay is a dpop.ReplayCache in Redis
// (github.com/redis/go-redis/v9), shared by every instance of a
// deployment: a proof or a client assertion used on one instance is
// refused on all of them, and the cache's epoch — to which DPoP nonces and
// login challenges are bound — is the deployment's, so a nonce from one
// instance is good on another.
//
// Redis is ephemeral: when it loses its data (a restart without
// persistence, a flush), the epoch it held goes with it. The next use
// notices, makes a new epoch and reports it (OnEpoch), so nonces and
// challenges issued before are refused with the proofs the cache forgot,
// as after a restart of an in-process cache.
package redisreplay

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
)

// use records a key unless it is there, provided the epoch is ours:
// 1 fresh, 0 seen, -1 the epoch is gone or another.
var use = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PXAT', ARGV[2]) then return 1 end
return 0`)

// Cache is the shared replay cache.
type Cache struct {
	rdb    *redis.Client
	prefix string

	mu      sync.RWMutex
	epoch   []byte
	value   string // the epoch record as stored: hex epoch | since (unix ns)
	since   time.Time
	onEpoch func(epoch []byte)
}

// Open connects to the Redis at url and takes (or makes) the deployment's
// epoch. prefix names the deployment's keys (e.g. "mastio:<org>:").
func Open(ctx context.Context, url, prefix string) (*Cache, error) {
	quiet.Do(func() { redis.SetLogger(silent{}) }) // errors come back to the caller, who logs them
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis URL: %w", err)
	}
	// Fail fast while Redis is down: the caller answers 503 (or degrades)
	// rather than holding the request through retries.
	opts.DialTimeout, opts.ReadTimeout, opts.WriteTimeout, opts.MaxRetries = time.Second, time.Second, time.Second, 1
	opts.DialerRetries = 1
	c := &Cache{rdb: redis.NewClient(opts), prefix: prefix}
	if err := c.loadEpoch(ctx); err != nil {
		c.rdb.Close()
		return nil, err
	}
	return c, nil
}

// Client is the Redis client, for the deployment's other shared state
// (rate limits).
func (c *Cache) Client() *redis.Client { return c.rdb }

// Close closes the connections.
func (c *Cache) Close() error { return c.rdb.Close() }

// Ping checks that Redis answers (the readiness probe).
func (c *Cache) Ping(ctx context.Context) error { return c.rdb.Ping(ctx).Err() }

// OnEpoch registers fn, called with the new epoch when Redis lost the old
// one.
func (c *Cache) OnEpoch(fn func(epoch []byte)) {
	c.mu.Lock()
	c.onEpoch = fn
	c.mu.Unlock()
}

func (c *Cache) epochKey() string { return c.prefix + "replay:epoch" }

// loadEpoch takes the stored epoch, making one when there is none.
func (c *Cache) loadEpoch(ctx context.Context) error {
	fresh := make([]byte, 16)
	rand.Read(fresh)
	candidate := hex.EncodeToString(fresh) + "|" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if err := c.rdb.SetNX(ctx, c.epochKey(), candidate, 0).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	value, err := c.rdb.Get(ctx, c.epochKey()).Result()
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	epochHex, sinceText, ok := strings.Cut(value, "|")
	epoch, err1 := hex.DecodeString(epochHex)
	since, err2 := strconv.ParseInt(sinceText, 10, 64)
	if !ok || err1 != nil || err2 != nil || len(epoch) != 16 {
		return fmt.Errorf("redis: the replay epoch %q is damaged", value)
	}
	c.mu.Lock()
	changed := c.value != "" && c.value != value
	c.epoch, c.value, c.since = epoch, value, time.Unix(0, since)
	fn := c.onEpoch
	c.mu.Unlock()
	if changed && fn != nil {
		fn(epoch)
	}
	return nil
}

// Use implements dpop.ReplayCache.
func (c *Cache) Use(ctx context.Context, key string, exp time.Time) (bool, error) {
	sum := sha256.Sum256([]byte(key))
	k := c.prefix + "replay:" + hex.EncodeToString(sum[:16])
	for attempt := 0; ; attempt++ {
		c.mu.RLock()
		value := c.value
		c.mu.RUnlock()
		n, err := use.Run(ctx, c.rdb, []string{c.epochKey(), k}, value, exp.UnixMilli()).Int()
		if err != nil {
			return false, fmt.Errorf("redis: %w", err)
		}
		if n >= 0 {
			return n == 1, nil
		}
		if attempt > 0 {
			return false, errors.New("redis: the replay epoch keeps changing")
		}
		if err := c.loadEpoch(ctx); err != nil { // Redis lost what it remembered: a new epoch
			return false, err
		}
	}
}

// Since implements dpop.ReplayCache: when the deployment's epoch began.
func (c *Cache) Since() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.since
}

// Epoch implements dpop.ReplayCache.
func (c *Cache) Epoch() []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.epoch
}

var quiet sync.Once

// silent drops go-redis's own log lines (which bypass Caddy's logging).
type silent struct{}

func (silent) Printf(context.Context, string, ...any) {}

var _ dpop.ReplayCache = (*Cache)(nil)
