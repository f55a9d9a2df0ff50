package redisreplay

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-mastio/caddy-mastio/internal/redistest"
)

func TestMain(m *testing.M) { os.Exit(redistest.Main(m.Run)) }

func open(t *testing.T, url string) *Cache {
	t.Helper()
	c, err := Open(context.Background(), url, "mastio:test:")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Two instances share what was used and the epoch.
func TestInstancesShareUsesAndEpoch(t *testing.T) {
	url := redistest.URL(t)
	a, b := open(t, url), open(t, url)
	if string(a.Epoch()) != string(b.Epoch()) || !a.Since().Equal(b.Since()) {
		t.Fatal("two instances have different epochs")
	}
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	if fresh, err := a.Use(ctx, "jkt|jti-1", exp); err != nil || !fresh {
		t.Fatalf("first use on A: %v %v", fresh, err)
	}
	if fresh, err := b.Use(ctx, "jkt|jti-1", exp); err != nil || fresh {
		t.Fatalf("the same key on B: fresh=%v %v, want refused", fresh, err)
	}
	if fresh, _ := b.Use(ctx, "jkt|jti-2", time.Now().Add(50*time.Millisecond)); !fresh {
		t.Fatal("another key refused")
	}
	time.Sleep(120 * time.Millisecond) // the key's own expiry, in Redis
	if fresh, _ := a.Use(ctx, "jkt|jti-2", exp); !fresh {
		t.Fatal("an expired key is still remembered")
	}
}

// Redis losing its data makes a new epoch, reported, and a later start
// time; Redis gone is an error (the caller refuses), and back, it works.
func TestLostDataNewEpochAndOutage(t *testing.T) {
	url := redistest.URL(t)
	a := open(t, url)
	old, oldSince := a.Epoch(), a.Since()
	got := make(chan []byte, 1)
	a.OnEpoch(func(e []byte) { got <- e })
	opts, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	rdb.FlushDB(context.Background())
	if fresh, err := a.Use(context.Background(), "k", time.Now().Add(time.Minute)); err != nil || !fresh {
		t.Fatalf("use after the flush: %v %v", fresh, err)
	}
	select {
	case e := <-got:
		if string(e) == string(old) || !a.Since().After(oldSince) {
			t.Fatal("the epoch did not change")
		}
	default:
		t.Fatal("the new epoch was not reported")
	}
	redistest.Stop(t)
	if _, err := a.Use(context.Background(), "k2", time.Now().Add(time.Minute)); err == nil {
		t.Fatal("a use with Redis down succeeded")
	}
	redistest.Restart(t)
	if fresh, err := a.Use(context.Background(), "k3", time.Now().Add(time.Minute)); err != nil || !fresh {
		t.Fatalf("a use after Redis came back: %v %v", fresh, err)
	}
}
