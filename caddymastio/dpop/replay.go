package dpop

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"sync"
	"time"
)

// ReplayCache remembers used proof identifiers until they expire.
type ReplayCache interface {
	// Use records key until exp. It returns false if key was already
	// recorded and has not expired.
	Use(ctx context.Context, key string, exp time.Time) (bool, error)
	// Since is when the cache began remembering: it cannot vouch for a
	// proof issued before then.
	Since() time.Time
	// Epoch identifies this cache's memory; nonces are bound to it (see
	// Nonces), so a nonce from before it began is refused.
	Epoch() []byte
}

// ErrCacheFull is returned when a MemoryCache holds its capacity of live
// entries: the check fails closed rather than forgetting live proofs.
var ErrCacheFull = errors.New("replay cache is full")

// MemoryCache is an in-process ReplayCache with bounded memory. Keys are
// stored as 16-byte hashes (about 50 bytes per entry with the map and the
// expiry queue) in 16 shards; expired entries are dropped as new ones
// arrive. It holds at most Capacity live entries.
type MemoryCache struct {
	shards [16]shard
	per    int
	now    func() time.Time
	since  time.Time
	epoch  [16]byte
}

type shard struct {
	mu    sync.Mutex
	m     map[[16]byte]int64
	queue []queued
	head  int
}

type queued struct {
	key [16]byte
	exp int64
}

// DefaultReplayCapacity is the default bound on live entries.
const DefaultReplayCapacity = 1 << 20

// NewMemoryCache returns a cache holding at most capacity live entries.
func NewMemoryCache(capacity int) *MemoryCache {
	if capacity <= 0 {
		capacity = DefaultReplayCapacity
	}
	c := &MemoryCache{per: (capacity + 15) / 16, now: time.Now, since: time.Now()}
	rand.Read(c.epoch[:])
	for i := range c.shards {
		c.shards[i].m = map[[16]byte]int64{}
	}
	return c
}

// Since implements ReplayCache: the cache's creation.
func (c *MemoryCache) Since() time.Time { return c.since }

// Epoch implements ReplayCache: random, new for every cache.
func (c *MemoryCache) Epoch() []byte { return c.epoch[:] }

// Use implements ReplayCache.
func (c *MemoryCache) Use(_ context.Context, key string, exp time.Time) (bool, error) {
	sum := sha256.Sum256([]byte(key))
	var k [16]byte
	copy(k[:], sum[:16])
	s := &c.shards[k[0]&15]
	now := c.now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if e, ok := s.m[k]; ok && e > now {
		return false, nil
	}
	if len(s.m) >= c.per {
		s.sweep(now)
		if len(s.m) >= c.per {
			return false, ErrCacheFull
		}
	}
	s.m[k] = exp.UnixNano()
	s.queue = append(s.queue, queued{k, exp.UnixNano()})
	return true, nil
}

// expire drops entries from the front of the queue that have expired.
// Entries arrive roughly in expiry order, so this keeps up with traffic.
func (s *shard) expire(now int64) {
	for s.head < len(s.queue) && s.queue[s.head].exp <= now {
		q := s.queue[s.head]
		if e, ok := s.m[q.key]; ok && e == q.exp {
			delete(s.m, q.key)
		}
		s.head++
	}
	if s.head > 1024 && s.head > len(s.queue)/2 {
		s.queue = append(s.queue[:0:0], s.queue[s.head:]...)
		s.head = 0
	}
}

// sweep drops every expired entry, wherever it is in the queue.
func (s *shard) sweep(now int64) {
	live := s.queue[:0:0]
	for _, q := range s.queue[s.head:] {
		if q.exp > now {
			live = append(live, q)
		} else if e, ok := s.m[q.key]; ok && e == q.exp {
			delete(s.m, q.key)
		}
	}
	s.queue, s.head = live, 0
}

// Len returns the number of entries held (live or not yet dropped).
func (c *MemoryCache) Len() int {
	n := 0
	for i := range c.shards {
		c.shards[i].mu.Lock()
		n += len(c.shards[i].m)
		c.shards[i].mu.Unlock()
	}
	return n
}
