// Package redislimit is a rate limiter in Redis shared by the instances of
// a deployment: n events per period per key, bursts of burst, counted
// once whatever instance sees them (GCRA, on Redis's clock, in one Lua
// script: no instance's clock or race can let more through).
package redislimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
)

// gcra allows an event unless the key's theoretical arrival time is more
// than the burst tolerance ahead of now; it returns 0 (allowed) or the
// milliseconds to wait.
var gcra = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then return tat - tolerance - now end
tat = tat + interval
redis.call('SET', KEYS[1], tat, 'PX', tat - now + 1000)
return 0`)

// Limiter is one limit in Redis.
type Limiter struct {
	rdb       *redis.Client
	prefix    string
	interval  int64 // ms per event
	tolerance int64 // ms of burst
	// Unavailable decides while Redis cannot be asked (the local limiter,
	// or a refusal).
	Unavailable func(key string, err error) (bool, time.Duration)
}

// New returns the limit named prefix (n events per period, bursts of
// burst) on rdb.
func New(rdb *redis.Client, prefix string, n int, period time.Duration, burst int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	interval := period.Milliseconds() / int64(max(n, 1))
	return &Limiter{rdb: rdb, prefix: prefix, interval: interval, tolerance: interval * int64(burst-1)}
}

// Allow implements ratelimit.Allower.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	sum := sha256.Sum256([]byte(key))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	wait, err := gcra.Run(ctx, l.rdb, []string{l.prefix + hex.EncodeToString(sum[:12])}, l.interval, l.tolerance).Int64()
	if err != nil {
		return l.Unavailable(key, err)
	}
	return wait == 0, time.Duration(wait) * time.Millisecond
}

var _ ratelimit.Allower = (*Limiter)(nil)
