package mastio

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop/redisreplay"
	"github.com/caddy-mastio/caddy-mastio/internal/secreturl"
)

// openReplayCache is the DPoP and assertion replay cache: in memory, or in
// the Redis the instances of a deployment share (Location.Redis). While
// Redis cannot be reached, proofs are refused with 503 (closed, the
// default) or checked by this instance alone, with a warning and a metric
// (degrade).
func (s *Shared) openReplayCache(ctx context.Context) (dpop.ReplayCache, error) {
	if s.redisURL == "" {
		return dpop.NewMemoryCache(dpop.DefaultReplayCapacity), nil
	}
	rc, err := redisreplay.Open(ctx, s.redisURL, "mastio:"+s.orgID+":")
	if err != nil {
		return nil, fmt.Errorf("redis %s: %w", secreturl.Redact(s.redisURL), err)
	}
	s.redis = rc
	if s.redisDegrade {
		return &degradingCache{ReplayCache: rc, local: dpop.NewMemoryCache(dpop.DefaultReplayCapacity), s: s}, nil
	}
	return rc, nil
}

// bindEpoch binds the nonces and login challenges to the replay cache's
// epoch: those issued before a new epoch are refused.
func (s *Shared) bindEpoch(nonceKey, epoch []byte) {
	mac := hmac.New(sha256.New, nonceKey)
	mac.Write([]byte("login-challenge key|"))
	mac.Write(epoch)
	key := mac.Sum(nil)
	s.challengeKey.Store(&key)
	if s.nonces == nil {
		s.nonces = dpop.NewNonces(nonceKey, dpop.DefaultNonceStep, epoch)
	} else {
		s.nonces.SetEpoch(epoch)
	}
}

// degradingCache is the shared cache, or this instance's memory while the
// shared one cannot be reached.
type degradingCache struct {
	dpop.ReplayCache
	local *dpop.MemoryCache
	s     *Shared
	warn  atomic.Int64 // unix ns of the last warning
}

func (d *degradingCache) Use(ctx context.Context, key string, exp time.Time) (bool, error) {
	fresh, err := d.ReplayCache.Use(ctx, key, exp)
	if err == nil {
		return fresh, nil
	}
	redisDegraded.Inc()
	if last := d.warn.Load(); time.Since(time.Unix(0, last)) > time.Minute && d.warn.CompareAndSwap(last, time.Now().UnixNano()) { // a line a minute
		d.s.log().Warn("redis unavailable: replay protection is this instance's alone (redis_unavailable degrade)", zap.Error(err))
	}
	return d.local.Use(ctx, key, exp)
}
