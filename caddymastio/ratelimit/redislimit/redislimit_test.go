package redislimit

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-mastio/caddy-mastio/internal/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m.Run)) }

func client(t *testing.T) *redis.Client {
	opts, err := redis.ParseURL(redistest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// Two instances count against one limit: 3 a minute in all, the fourth
// refused on either with how long to wait; other keys are not affected;
// Redis gone, the instance's Unavailable decides.
func TestInstancesShareTheLimit(t *testing.T) {
	rdb := client(t)
	a, b := New(rdb, "t:rl:", 3, time.Minute, 3), New(rdb, "t:rl:", 3, time.Minute, 3)
	for i, l := range []*Limiter{a, b, a} {
		if ok, _ := l.Allow("10.0.0.1"); !ok {
			t.Fatalf("event %d refused", i+1)
		}
	}
	ok, wait := b.Allow("10.0.0.1")
	if ok || wait < 15*time.Second || wait > 20*time.Second {
		t.Fatalf("the fourth event: %v, wait %s (want about 20s)", ok, wait)
	}
	if ok, _ := b.Allow("10.0.0.2"); !ok {
		t.Fatal("another key was refused")
	}
	redistest.Stop(t)
	t.Cleanup(func() { redistest.Restart(t) })
	var asked error
	a.Unavailable = func(key string, err error) (bool, time.Duration) { asked = err; return false, 5 * time.Second }
	if ok, _ := a.Allow("10.0.0.3"); ok || asked == nil || errors.Is(asked, context.Canceled) {
		t.Fatalf("with Redis down: %v, Unavailable asked with %v", ok, asked)
	}
}
