// Package storetest is the conformance suite of package store's contract:
// every implementation (store/sqlite today, Postgres next) runs it
// unchanged from its own tests:
//
//	func TestContract(t *testing.T) { storetest.Run(t, open) }
//
// where open returns a fresh, empty store that is closed when the test
// ends.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Open returns a fresh, empty store, closed when t ends.
type Open func(t *testing.T) store.Store

// Run runs the suite against the stores open returns.
func Run(t *testing.T, open Open) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Config", testConfig},
		{"UpdateIsAtomic", testUpdateIsAtomic},
		{"UpdatesAreSerializable", testUpdatesAreSerializable},
		{"Agents", testAgents},
		{"Certs", testCerts},
		{"Enrollments", testEnrollments},
		{"SigningKeys", testSigningKeys},
		{"Servers", testServers},
		{"UseOnce", testUseOnce},
		{"AuditInTransactions", testAuditInTransactions},
		{"AuditWriter", testAuditWriter},
		{"AuditFilter", testAuditFilter},
		{"AuditArchive", testAuditArchive},
		{"SealedFiles", testSealedFiles},
		{"Check", testCheck},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
}

var ctx = context.Background()

// update runs fn in an Update and fails the test on an error.
func update(t *testing.T, st store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := st.Update(ctx, fn); err != nil {
		t.Fatal(err)
	}
}

// ts is a time with nanoseconds, as stores must keep it.
func ts(offset time.Duration) time.Time {
	return time.Date(2026, 12, 2, 10, 0, 0, 123456789, time.UTC).Add(offset)
}

func sameTime(a, b *time.Time) bool {
	return a == nil && b == nil || a != nil && b != nil && a.Equal(*b)
}

func testConfig(t *testing.T, st store.Store) {
	if _, ok, err := st.Config(ctx, "org_id"); ok || err != nil {
		t.Fatalf("a missing key: %v %v", ok, err)
	}
	update(t, st, func(tx store.Tx) error {
		if v, err := tx.InitConfig(ctx, "org_id", "first"); err != nil || v != "first" {
			return fmt.Errorf("first InitConfig: %q %v", v, err)
		}
		if v, err := tx.InitConfig(ctx, "org_id", "second"); err != nil || v != "first" {
			return fmt.Errorf("second InitConfig returned %q %v, want the first value", v, err)
		}
		return tx.SetConfig(ctx, "policy", "a")
	})
	update(t, st, func(tx store.Tx) error { return tx.SetConfig(ctx, "policy", "b") })
	if v, ok, err := st.Config(ctx, "policy"); !ok || v != "b" || err != nil {
		t.Fatalf("SetConfig did not replace: %q %v %v", v, ok, err)
	}
	if v, _, _ := st.Config(ctx, "org_id"); v != "first" {
		t.Fatalf("org_id %q", v)
	}
}

func testUpdateIsAtomic(t *testing.T, st store.Store) {
	failed := errors.New("fail")
	err := st.Update(ctx, func(tx store.Tx) error {
		if err := tx.SetConfig(ctx, "k", "v"); err != nil {
			return err
		}
		// A transaction reads its own writes.
		if v, ok, err := tx.Config(ctx, "k"); !ok || v != "v" || err != nil {
			return fmt.Errorf("own write not visible: %q %v %v", v, ok, err)
		}
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	if _, ok, _ := st.Config(ctx, "k"); ok {
		t.Fatal("a failed Update committed its write")
	}
}

// Concurrent read-modify-write Updates lose nothing.
func testUpdatesAreSerializable(t *testing.T, st store.Store) {
	update(t, st, func(tx store.Tx) error { return tx.SetConfig(ctx, "n", "0") })
	var wg sync.WaitGroup
	const workers, each = 8, 10
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				err := st.Update(ctx, func(tx store.Tx) error {
					v, _, err := tx.Config(ctx, "n")
					if err != nil {
						return err
					}
					var n int
					fmt.Sscan(v, &n)
					return tx.SetConfig(ctx, "n", fmt.Sprint(n+1))
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if v, _, _ := st.Config(ctx, "n"); v != fmt.Sprint(workers*each) {
		t.Fatalf("counter %s after %d increments", v, workers*each)
	}
}

func testCheck(t *testing.T, st store.Store) {
	if err := st.Check(ctx); err != nil {
		t.Fatalf("a healthy store: %v", err)
	}
	if st.Location() == "" {
		t.Fatal("no location")
	}
}
