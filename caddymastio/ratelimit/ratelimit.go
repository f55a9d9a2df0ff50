// Package ratelimit holds keyed token buckets with bounded memory.
package ratelimit

import (
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Allower decides, per key, whether one more event is allowed now, and if
// not how long to wait: a Limiter in memory, or one shared by instances.
type Allower interface {
	Allow(key string) (bool, time.Duration)
}

var _ Allower = (*Limiter)(nil)

// Limiter allows, per key, Rate events per Per with bursts up to Burst.
// It keeps at most MaxKeys buckets in least-recently-used order: when the
// table is full, a new key takes the place of the least recently used one
// if that bucket has refilled completely (forgetting it changes nothing);
// otherwise the new key is refused — under a flood of distinct keys the
// limiter fails closed instead of growing without bound. Every operation
// is O(1).
type Limiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	lru     *simplelru.LRU[string, *bucket]
	maxKeys int
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter allowing n events per period per key, with bursts
// of burst (at least 1), keeping at most maxKeys keys.
func New(n int, period time.Duration, burst, maxKeys int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	if maxKeys < 1 {
		maxKeys = 1
	}
	lru, _ := simplelru.NewLRU[string, *bucket](maxKeys, nil) // only fails for a size below 1
	return &Limiter{rate: float64(n) / period.Seconds(), burst: float64(burst), now: time.Now, lru: lru, maxKeys: maxKeys}
}

// full reports whether b has refilled to the burst size at now.
func (l *Limiter) full(b *bucket, now time.Time) bool {
	return b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst
}

// Allow takes a token for key. When none is left it reports how long to
// wait for the next one.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.lru.Get(key)
	if !ok {
		if l.lru.Len() >= l.maxKeys {
			if _, oldest, _ := l.lru.GetOldest(); !l.full(oldest, now) {
				return false, time.Second
			}
			l.lru.RemoveOldest()
		}
		b = &bucket{tokens: l.burst, last: now}
		l.lru.Add(key, b)
	}
	b.tokens = math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, wait
}

// Len returns the number of keys held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// Peek reports whether key has a token left, without taking it.
func (l *Limiter) Peek(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.lru.Peek(key)
	if !ok {
		return true, 0
	}
	tokens := math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	if tokens >= 1 {
		return true, 0
	}
	return false, time.Duration((1 - tokens) / l.rate * float64(time.Second))
}
