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
