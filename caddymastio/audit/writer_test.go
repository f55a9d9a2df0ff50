package audit_test

// The writer: group commit, Queue and QueueLazily, and Change's place in
// the chain.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

func TestChangeCommitsWithItsRowsAndInterleavesWithTheWriter(t *testing.T) {
	l, st := newLog(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 50; i++ {
			if _, err := l.Append(ctx, audit.Event{Type: "t.bg", Actor: "a"}); err != nil {
				t.Error(err)
			}
		}
	}()
	failed := errors.New("the change fails")
	for i := 0; i < 20; i++ {
		_, err := l.Change(ctx, func(c *audit.Change) error {
			if err := c.SetConfig(ctx, fmt.Sprint("k", i), "v"); err != nil {
				return err
			}
			c.Record(audit.Event{Type: "t.tx", Actor: "a", Details: map[string]int{"i": i}})
			if i%2 == 0 {
				return failed // rolled back together with its change
			}
			return nil
		})
		if (i%2 == 0) != errors.Is(err, failed) {
			t.Fatalf("change %d: %v", i, err)
		}
	}
	// An invalid event fails the change: nothing of it is committed.
	if _, err := l.Change(ctx, func(c *audit.Change) error {
		c.Record(audit.Event{Type: "t.bad"}) // no actor
		return c.SetConfig(ctx, "bad", "v")
	}); err == nil {
		t.Fatal("a change with an invalid event committed")
	}
	wg.Wait()
	var n, kept int
	st.Raw().QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 't.tx'`).Scan(&n)
	st.Raw().QueryRow(`SELECT COUNT(*) FROM config WHERE value = 'v'`).Scan(&kept)
	if n != 10 || kept != 10 {
		t.Fatalf("%d committed rows and %d changes, want 10 and 10", n, kept)
	}
	res, err := audit.Verify(ctx, st, 1, 0)
	if err != nil || !res.OK() || res.Checked != 60 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// holdFirst makes a log's first commit wait in BeforeCommit: entered is
// closed when it does, and it goes on once release is closed.
type holdFirst struct {
	entered, release chan struct{}
	once             sync.Once
}

func newHold() *holdFirst {
	return &holdFirst{entered: make(chan struct{}), release: make(chan struct{})}
}

// heldStore holds the first audit batch inside its transaction (where a
// commit would check the file) until hold is released, and records the
// durability each batch asks for.
type heldStore struct {
	*testDB
	hold    *holdFirst
	outside bool // hold before the transaction begins (no lock held)
	mu      sync.Mutex
	syncs   []audit.Sync
}

func (h *heldStore) AuditWriter() store.AuditWriter { return heldWriter{h.testDB.AuditWriter(), h} }

type heldWriter struct {
	store.AuditWriter
	h *heldStore
}

func (w heldWriter) Append(ctx context.Context, d store.Durability, head *store.AuditHead,
	rows func(store.AuditHead) ([]store.AuditRow, error)) error {
	w.h.mu.Lock()
	w.h.syncs = append(w.h.syncs, d)
	w.h.mu.Unlock()
	if hold := w.h.hold; hold != nil && w.h.outside {
		hold.once.Do(func() {
			close(hold.entered)
			<-hold.release
		})
	}
	return w.AuditWriter.Append(ctx, d, head, func(h store.AuditHead) ([]store.AuditRow, error) {
		if hold := w.h.hold; hold != nil && !w.h.outside {
			hold.once.Do(func() {
				close(hold.entered)
				<-hold.release
			})
		}
		return rows(h)
	})
}

// newHeldLog opens a log whose first commit is held by hold (nil: none).
func newHeldLog(t *testing.T, hold *holdFirst) (*audit.Log, *heldStore) {
	t.Helper()
	st := &heldStore{testDB: openDB(t, filepath.Join(t.TempDir(), "mastio.db")), hold: hold}
	l := audit.Open(st, audit.Options{})
	t.Cleanup(func() { l.Close() })
	return l, st
}

// until polls cond (a state, not a duration) for up to 30 s.
func until(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// appendAsync runs Append in a goroutine; the channel yields its error.
func appendAsync(l interface {
	Append(context.Context, audit.Event) (audit.Record, error)
}, typ string) chan error {
	done := make(chan error, 1)
	go func() {
		_, err := l.Append(context.Background(), audit.Event{Type: typ, Actor: "a"})
		done <- err
	}()
	return done
}

// within fails the test if done yields nothing for a long time.
func within(t *testing.T, done chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: still waiting after 30 s", what)
	}
}

// pending reports whether done has yielded nothing yet.
func pending(done chan error) bool {
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// TestQueueReturnsBeforeItsCommit: Queue hands the row over and returns
// while the commit runs (here held); Wait returns it once committed, in
// queue order, and again on a second Wait.
func TestQueueReturnsBeforeItsCommit(t *testing.T) {
	hold := newHold()
	l, st := newHeldLog(t, hold)
	p, err := l.Queue(audit.Event{Type: "t.first", Actor: "a"})
	if err != nil {
		t.Fatal(err)
	}
	<-hold.entered // Queue returned although its commit is held
	q, err := l.Queue(audit.Event{Type: "t.second", Actor: "a"})
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { _, err := q.Wait(); waited <- err }()
	if !pending(waited) {
		t.Fatal("Wait returned before the row was committed")
	}
	close(hold.release)
	within(t, waited, "the queued row")
	first, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	second, _ := q.Wait()
	again, _ := q.Wait()
	if second.Seq != first.Seq+1 || again.Seq != second.Seq {
		t.Fatalf("seqs %d, %d, %d: want two rows in queue order and the same answer twice", first.Seq, second.Seq, again.Seq)
	}
	if res, err := audit.Verify(context.Background(), st, 0, 0); err != nil || !res.OK() || res.Checked != 2 {
		t.Fatalf("%+v %v", res, err)
	}
	if _, err := l.Queue(audit.Event{Type: "", Actor: "a"}); err == nil || l.QueueLen() != 0 {
		t.Fatal("an invalid event was queued")
	}
	l.Close()
	if _, err := l.Queue(audit.Event{Type: "t.late", Actor: "a"}); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("Queue after Close: %v", err)
	}
}

// TestChangeFollowsTheRowsQueuedBeforeIt: a Change started while a queued
// row is not committed yet waits for it, so the chain keeps the order in
// which the rows were decided (an MCP call's outcome before the agent's
// revocation).
func TestChangeFollowsTheRowsQueuedBeforeIt(t *testing.T) {
	hold := newHold()
	l, st := newHeldLog(t, hold)
	st.outside = true // the row's commit has not begun: the database is free for the Change
	if _, err := l.Queue(audit.Event{Type: "t.outcome", Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	<-hold.entered
	changed := make(chan error, 1)
	go func() {
		_, err := l.Change(context.Background(), func(c *audit.Change) error {
			c.Record(audit.Event{Type: "t.revoked", Actor: "admin"})
			return nil
		})
		changed <- err
	}()
	time.Sleep(100 * time.Millisecond) // time for a Change that does not wait to commit first
	if !pending(changed) {
		close(hold.release)
		t.Fatal("the Change committed while a row queued before it was not")
	}
	close(hold.release)
	within(t, changed, "the change")
	var order []string
	audit.Read(context.Background(), st, 1, 0, func(r audit.Record) error { order = append(order, r.Type); return nil })
	if fmt.Sprint(order) != "[t.outcome t.revoked]" {
		t.Fatalf("chain order %v", order)
	}
}

func TestSetSyncReachesTheWriter(t *testing.T) {
	l, st := newHeldLog(t, nil)
	appendN(t, l, 1)
	l.SetSync(audit.SyncOS)
	appendN(t, l, 1)
	l.SetSync(audit.SyncFull)
	appendN(t, l, 1)
	if fmt.Sprint(st.syncs) != fmt.Sprint([]audit.Sync{audit.SyncFull, audit.SyncOS, audit.SyncFull}) {
		t.Fatalf("the writer was asked for %v", st.syncs)
	}
	if res, err := audit.Verify(context.Background(), st, 0, 0); err != nil || !res.OK() {
		t.Fatalf("%+v %v", res, err)
	}
}

// changingStore runs a Change (through log, another Log on the same
// database, as another process would) when its writer's second batch is
// about to start, after the writer decided to chain from its cached head:
// the head it holds is then stale.
type changingStore struct {
	*testDB
	log     *audit.Log
	batches int
}

func (c *changingStore) AuditWriter() store.AuditWriter {
	return changingWriter{c.testDB.AuditWriter(), c}
}

type changingWriter struct {
	store.AuditWriter
	c *changingStore
}

func (w changingWriter) Append(ctx context.Context, d store.Durability, head *store.AuditHead,
	rows func(store.AuditHead) ([]store.AuditRow, error)) error {
	if w.c.batches++; w.c.batches == 2 {
		if _, err := w.c.log.Change(ctx, func(c *audit.Change) error {
			c.Record(audit.Event{Type: "t.change", Actor: "a"})
			return nil
		}); err != nil {
			return err
		}
	}
	return w.AuditWriter.Append(ctx, d, head, rows)
}

// A Change that commits between the writer's look at the cached head and
// its transaction: the writer's batch still commits, after the Change's
// row (the chain head is read back), instead of failing.
func TestAppendAfterAChangeThatRacedTheCachedHead(t *testing.T) {
	st := &changingStore{testDB: openDB(t, filepath.Join(t.TempDir(), "mastio.db"))}
	l := audit.Open(st, audit.Options{})
	st.log = audit.Open(st.testDB, audit.Options{})
	t.Cleanup(func() { l.Close(); st.log.Close() })
	ctx := context.Background()
	for i := range 2 {
		if _, err := l.Append(ctx, audit.Event{Type: "t.append", Actor: "a"}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	var types []string
	rows, _ := st.Raw().Query(`SELECT event_type FROM audit_events ORDER BY seq`)
	for rows.Next() {
		var typ string
		rows.Scan(&typ)
		types = append(types, typ)
	}
	rows.Close()
	if strings.Join(types, ",") != "t.append,t.change,t.append" {
		t.Fatalf("rows: %v", types)
	}
	if res, err := audit.Verify(ctx, st, 1, 0); err != nil || !res.OK() {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// TestLazyRowsRideWithTheNextCommit: a row queued lazily starts no commit;
// the next row's commit takes it along (one commit, one time stamp), and
// Flush commits it when nothing else comes. With nothing else at all, it
// is committed after LazyDelay.
func TestLazyRowsRideWithTheNextCommit(t *testing.T) {
	st := openDB(t, filepath.Join(t.TempDir(), "mastio.db"))
	l := audit.Open(st, audit.Options{LazyDelay: time.Hour})
	ctx := context.Background()
	if err := l.QueueLazily(audit.Event{Type: "t.lazy", Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	if l.QueueLen() != 1 {
		t.Fatal("the lazy row did not wait for a commit")
	}
	rec, err := l.Append(ctx, audit.Event{Type: "t.eager", Actor: "a"})
	if err != nil {
		t.Fatal(err)
	}
	var commits, rows int
	st.Raw().QueryRow(`SELECT COUNT(DISTINCT time), COUNT(*) FROM audit_events`).Scan(&commits, &rows)
	if rows != 2 || commits != 1 || rec.Seq != 2 {
		t.Fatalf("%d rows in %d commits, the eager one at seq %d: want the lazy row first, in the same commit", rows, commits, rec.Seq)
	}
	if err := l.QueueLazily(audit.Event{Type: "t.flushed", Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	l.Flush()
	if res, err := audit.Verify(ctx, st, 1, 0); err != nil || !res.OK() || res.Checked != 3 {
		t.Fatalf("after Flush: %+v %v", res, err)
	}
	if err := l.QueueLazily(audit.Event{Type: "", Actor: "a"}); err == nil {
		t.Fatal("an invalid lazy row was queued")
	}
	if err := l.QueueLazily(audit.Event{Type: "t.at_close", Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	l.Close() // commits it
	if err := l.QueueLazily(audit.Event{Type: "t.late", Actor: "a"}); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if res, _ := audit.Verify(ctx, st, 1, 0); res.Checked != 4 {
		t.Fatalf("the row queued before Close: %d rows", res.Checked)
	}

	alone := audit.Open(st, audit.Options{LazyDelay: time.Millisecond})
	defer alone.Close()
	if err := alone.QueueLazily(audit.Event{Type: "t.alone", Actor: "a"}); err != nil {
		t.Fatal(err)
	}
	until(t, func() bool { res, _ := audit.Verify(ctx, st, 1, 0); return res.Checked == 5 }, "the lone lazy row committed by itself")
}
