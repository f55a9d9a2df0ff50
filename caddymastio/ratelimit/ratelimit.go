// Package ratelimit holds keyed token buckets with bounded memory.
package ratelimit

import (
	"math"
	"sync"
	"time"
)

// Limiter allows, per key, Rate events per Per with bursts up to Burst.
// It keeps at most MaxKeys buckets: when the table is full, buckets that
// have refilled completely (idle keys) are dropped; if every bucket is
// still in use, new keys are refused — under a flood of distinct keys the
// limiter fails closed instead of growing without bound.
type Limiter struct {
	rate    float64 // tokens per second
	burst   float64
	maxKeys int
	now     func() time.Time

	mu sync.Mutex
	m  map[string]*bucket
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
	return &Limiter{rate: float64(n) / period.Seconds(), burst: float64(burst), maxKeys: maxKeys,
		now: time.Now, m: map[string]*bucket{}}
}

// Allow takes a token for key. When none is left it reports how long to
// wait for the next one.
func (l *Limiter) Allow(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m[key]
	if !ok {
		if len(l.m) >= l.maxKeys {
			l.sweep(now)
			if len(l.m) >= l.maxKeys {
				return false, time.Second
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.m[key] = b
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

// sweep drops buckets that have refilled to the burst size: forgetting
// them changes nothing.
func (l *Limiter) sweep(now time.Time) {
	for k, b := range l.m {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.m, k)
		}
	}
}

// Len returns the number of keys held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// Peek reports whether key has a token left, without taking it.
func (l *Limiter) Peek(key string) (bool, time.Duration) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.m[key]
	if !ok {
		return true, 0
	}
	tokens := math.Min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	if tokens >= 1 {
		return true, 0
	}
	return false, time.Duration((1 - tokens) / l.rate * float64(time.Second))
}
