package ratelimit

import (
	"strconv"
	"testing"
	"time"
)

func TestBucketRefills(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(5, time.Minute, 5, 100)
	l.now = func() time.Time { return now }
	for i := 0; i < 5; i++ {
		if ok, _ := l.Allow("ip"); !ok {
			t.Fatalf("request %d refused within the burst", i)
		}
	}
	ok, wait := l.Allow("ip")
	if ok || wait < 11*time.Second || wait > 13*time.Second {
		t.Fatalf("6th request: ok=%v wait=%v, want refused with ~12s", ok, wait)
	}
	if ok, _ := l.Allow("other"); !ok {
		t.Fatal("keys are not independent")
	}
	now = now.Add(12 * time.Second)
	if ok, _ := l.Allow("ip"); !ok {
		t.Fatal("no refill")
	}
}

func TestMemoryIsBounded(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(1, time.Second, 1, 1000)
	l.now = func() time.Time { return now }
	for i := 0; i < 1_000_000; i++ {
		l.Allow(strconv.Itoa(i))
		if i%1000 == 0 {
			now = now.Add(2 * time.Second) // earlier keys have refilled by now
		}
	}
	if n := l.Len(); n > 1000 {
		t.Fatalf("%d keys held, bound is 1000", n)
	}
	// A flood of distinct keys all still in use: new keys fail closed.
	for i := 0; i < 1000; i++ {
		l.Allow("busy" + strconv.Itoa(i))
	}
	if ok, _ := l.Allow("newcomer"); ok {
		t.Fatal("a new key was admitted into a table full of active keys")
	}
}

// BenchmarkNewKeyAt100k measures taking a token for a key not seen
// before while 100,000 keys are held (the table is full: the least
// recently used, refilled key makes room). Target: under 5 µs.
func BenchmarkNewKeyAt100k(b *testing.B) {
	now := time.Unix(0, 0)
	l := New(10, time.Minute, 10, 100_000)
	l.now = func() time.Time { return now }
	for i := 0; i < 100_000; i++ {
		l.Allow("warm" + strconv.Itoa(i))
	}
	now = now.Add(time.Hour) // every held key has refilled
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = "new" + strconv.Itoa(i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(6 * time.Second) // a key's one token back: the oldest has refilled
		if ok, _ := l.Allow(keys[i]); !ok {
			b.Fatal("a new key was refused although the oldest had refilled")
		}
	}
}

// TestLeastRecentlyUsedGivesWay: when full, the least recently used key
// makes room once it has refilled; a recently used key is kept.
func TestLeastRecentlyUsedGivesWay(t *testing.T) {
	now := time.Unix(0, 0)
	l := New(1, time.Second, 2, 2)
	l.now = func() time.Time { return now }
	l.Allow("a")
	l.Allow("a") // a is empty
	l.Allow("b")
	if ok, _ := l.Allow("c"); ok {
		t.Fatal("c admitted while a (the oldest) had not refilled")
	}
	now = now.Add(3 * time.Second)
	l.Allow("b") // b is now the most recently used
	if ok, _ := l.Allow("c"); !ok {
		t.Fatal("c refused although a had refilled")
	}
	l.Allow("b")
	l.Allow("b")
	if ok, _ := l.Allow("b"); ok {
		t.Fatal("b lost its state: it was evicted instead of a")
	}
}

// BenchmarkNewKeyAt100kLive measures a key not seen before while 100,000
// keys that are all still in use are held: it is refused (fail closed),
// at the same cost whatever the table holds.
func BenchmarkNewKeyAt100kLive(b *testing.B) {
	now := time.Unix(0, 0)
	l := New(10, time.Minute, 10, 100_000)
	l.now = func() time.Time { return now }
	for i := 0; i < 100_000; i++ {
		l.Allow("live" + strconv.Itoa(i))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if ok, _ := l.Allow("new"); ok {
			b.Fatal("a new key was admitted into a table of live keys")
		}
	}
}
