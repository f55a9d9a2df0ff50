package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/storetest"
	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m.Run)) }

func open(t *testing.T) *DB {
	t.Helper()
	db, err := Open(context.Background(), pgtest.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t) })
}

// Two instances opening one new database at once migrate it once.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	url := pgtest.Database(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := Open(context.Background(), url)
			if err == nil {
				db.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	d, _ := Open(context.Background(), url)
	defer d.Close()
	if v, err := d.SchemaVersion(context.Background()); err != nil || v != LatestVersion() {
		t.Fatalf("schema version %d %v", v, err)
	}
}

// The schema refuses what the SQLite schema refuses.
func TestManualAuditEditsAreRefused(t *testing.T) {
	db := open(t)
	ctx := context.Background()
	err := db.Update(ctx, func(tx store.Tx) error {
		h, _ := tx.AuditHead(ctx)
		return tx.AppendAudit(ctx, store.AuditRow{Seq: h.Seq + 1, Time: "2026-12-02T00:00:00.000000000Z", Type: "t.x", Actor: "a",
			Result: "ok", Details: []byte("{}"), PrevHash: h.Hash, Hash: []byte{1}})
	})
	if err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]string{
		`UPDATE audit_events SET actor = 'mallory'`: "append-only",
		`DELETE FROM audit_events`:                  "append-only",
	} {
		if _, err := db.db.Exec(q); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", q, err)
		}
	}
	if !strings.Contains(db.Location(), "127.0.0.1") || strings.Contains(db.Location(), "password") {
		t.Errorf("location %q", db.Location())
	}
}

// Two instances append to one chain at once, each through its own group
// commit writer: every row lands once, and the chain verifies.
func TestTwoInstancesAppendToOneChain(t *testing.T) {
	url := pgtest.Database(t)
	var logs []*audit.Log
	for range 2 {
		db, err := Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		l := audit.Open(db, audit.Options{})
		t.Cleanup(func() { l.Close() })
		logs = append(logs, l)
	}
	const perWriter = 200
	var wg sync.WaitGroup
	errs := make(chan error, 2*8)
	for i, l := range logs {
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range perWriter / 8 {
					if _, err := l.Append(context.Background(), audit.Event{Type: "test.row", Actor: "system",
						Subject: fmt.Sprintf("instance-%d-%d-%d", i, w, n)}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	reader, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	res, err := audit.Verify(context.Background(), reader, 1, 0)
	if err != nil || !res.OK() || res.Checked != 2*perWriter {
		t.Fatalf("the chain written by two instances: %+v %v", res, err)
	}
}

// What one instance announces reaches the others when it commits, not on
// a rollback, and not itself.
func TestAnnouncementsReachTheOtherInstances(t *testing.T) {
	url := pgtest.Database(t)
	a, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan store.Change, 16)
	go a.Listen(ctx, func(c store.Change) { got <- c }, func(err error) { t.Errorf("feed lost: %v", err) })
	next := func() store.Change {
		t.Helper()
		select {
		case c := <-got:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no announcement within 5s")
			return store.Change{}
		}
	}
	if c := next(); c.Kind != store.ResyncAll {
		t.Fatalf("first: %+v, want a resync on connecting", c)
	}
	announce := func(db *DB, kind string, fail bool) {
		db.Update(ctx, func(tx store.Tx) error {
			if err := tx.Announce(ctx, kind, "orga::bot"); err != nil {
				t.Fatal(err)
			}
			if fail {
				return errors.New("rolled back")
			}
			return nil
		})
	}
	announce(b, "rolled.back", true)
	announce(a, "own.change", false)
	announce(b, "agent.revoked", false)
	if c := next(); c != (store.Change{Kind: "agent.revoked", Subject: "orga::bot"}) {
		t.Fatalf("got %+v, want only B's committed agent.revoked", c)
	}
}
