package audit_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jcs"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

// testDB is the store under test, with a handle of the test's own for
// the SQL it checks (or tampers) with.
type testDB struct {
	*sqlite.DB
	raw *sql.DB
}

func (d *testDB) Raw() *sql.DB { return d.raw }
func (d *testDB) Path() string { return d.Location() }

func openDB(t testing.TB, path string) *testDB {
	t.Helper()
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close(); st.Close() })
	return &testDB{DB: st, raw: raw}
}

func newLog(t testing.TB) (*audit.Log, *testDB) {
	t.Helper()
	st := openDB(t, filepath.Join(t.TempDir(), "mastio.db"))
	l := audit.Open(st, audit.Options{})
	t.Cleanup(func() { l.Close() })
	return l, st
}

func TestAppendChainsRowsFromGenesis(t *testing.T) {
	l, st := newLog(t)
	ctx := context.Background()
	r1, err := l.Append(ctx, audit.Event{Type: "system.start", Actor: "system", Details: map[string]any{"b": 2, "a": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := l.Append(ctx, audit.Event{Type: "agent.revoked", Actor: "admin", Subject: "org::a", Result: audit.ResultOK})
	if err != nil {
		t.Fatal(err)
	}
	if r1.Seq != 1 || r2.Seq != 2 {
		t.Fatalf("seqs %d %d", r1.Seq, r2.Seq)
	}
	if string(r1.PrevHash) != string(audit.GenesisHash) || len(audit.GenesisHash) != 32 {
		t.Fatal("first row does not chain to 32 zero bytes")
	}
	if string(r2.PrevHash) != string(r1.Hash) {
		t.Fatal("second row does not chain to the first")
	}
	if string(r1.Details) != `{"a":"x","b":2}` || string(r2.Details) != `{}` {
		t.Fatalf("details not canonical: %s %s", r1.Details, r2.Details)
	}

	// Recompute row 1's hash independently from the documented definition.
	row := map[string]any{"seq": 1, "time": r1.Time.UTC().Format(audit.TimeFormat), "event_type": "system.start",
		"actor": "system", "subject": "", "result": "ok", "details": map[string]any{"a": "x", "b": 2}}
	canon, err := jcs.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(make([]byte, 32), canon...))
	if string(want[:]) != string(r1.Hash) {
		t.Fatalf("hash is not SHA-256(prev ‖ JCS(row)); canonical row was %s", canon)
	}
	if !strings.HasSuffix(r1.Time.UTC().Format(audit.TimeFormat), "Z") {
		t.Fatal("time not UTC")
	}

	res, err := audit.Verify(ctx, st, 1, 0)
	if err != nil || !res.OK() || res.Checked != 2 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func TestAppendRejectsBadEventsAndStoresNothing(t *testing.T) {
	l, st := newLog(t)
	ctx := context.Background()
	bad := []audit.Event{
		{Type: "", Actor: "system"},
		{Type: "has space", Actor: "system"},
		{Type: "x.y", Actor: ""},
		{Type: "x.y", Actor: "a", Result: "maybe"},
		{Type: "x.y", Actor: "a", Details: []int{1}},
		{Type: "x.y", Actor: "a", Details: json.RawMessage(`{"a":1,"a":2}`)},
	}
	for _, ev := range bad {
		if _, err := l.Append(ctx, ev); err == nil {
			t.Errorf("%+v: expected an error", ev)
		}
	}
	var n int
	st.Raw().QueryRow(`SELECT COUNT(*) FROM audit_events`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d rows stored from invalid events", n)
	}
}

func TestConcurrentAppendsKeepOneValidChain(t *testing.T) {
	l, st := newLog(t)
	ctx := context.Background()
	const workers, each = 32, 40
	var wg sync.WaitGroup
	seen := make(chan int64, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				r, err := l.Append(ctx, audit.Event{Type: "test.concurrent", Actor: "worker", Details: map[string]int{"w": w, "i": i}})
				if err != nil {
					t.Error(err)
					return
				}
				seen <- r.Seq
			}
		}(w)
	}
	wg.Wait()
	close(seen)
	uniq := map[int64]bool{}
	for s := range seen {
		if uniq[s] {
			t.Fatalf("seq %d returned twice", s)
		}
		uniq[s] = true
	}
	if len(uniq) != workers*each {
		t.Fatalf("%d distinct seqs, want %d", len(uniq), workers*each)
	}
	res, err := audit.Verify(ctx, st, 1, 0)
	if err != nil || !res.OK() || res.Checked != workers*each {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func TestTwoWritersOnOneFileDoNotForkTheChain(t *testing.T) {
	// Even two Logs (as two processes would have) on one file keep a single
	// chain, because each reads the head inside its write transaction.
	_, st := newLog(t)
	second := openDB(t, st.Path())
	a := audit.Open(st, audit.Options{})
	b := audit.Open(second, audit.Options{})
	defer a.Close()
	defer b.Close()
	var wg sync.WaitGroup
	for _, l := range []*audit.Log{a, b} {
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(l *audit.Log) {
				defer wg.Done()
				for i := 0; i < 25; i++ {
					if _, err := l.Append(context.Background(), audit.Event{Type: "t.x", Actor: "a"}); err != nil {
						t.Error(err)
						return
					}
				}
			}(l)
		}
	}
	wg.Wait()
	res, err := audit.Verify(context.Background(), st, 1, 0)
	if err != nil || !res.OK() || res.Checked != 200 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func appendN(t *testing.T, l *audit.Log, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := l.Append(context.Background(), audit.Event{Type: "t.row", Actor: "a", Subject: "s", Details: map[string]int{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUpdateAndDeleteAreRefused(t *testing.T) {
	l, st := newLog(t)
	appendN(t, l, 3)
	if _, err := st.Raw().Exec(`UPDATE audit_events SET actor = 'mallory' WHERE seq = 2`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("UPDATE: %v", err)
	}
	if _, err := st.Raw().Exec(`DELETE FROM audit_events WHERE seq = 3`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("DELETE: %v", err)
	}
	res, _ := audit.Verify(context.Background(), st, 1, 0)
	if !res.OK() || res.Checked != 3 {
		t.Fatalf("chain changed: %+v", res)
	}
}

// rawConn opens the database the way an attacker with file access would,
// drops the guarding triggers and returns the handle.
func rawConn(t *testing.T, st *testDB) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+st.Path()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, trg := range []string{"audit_events_no_update", "audit_events_no_delete"} {
		if _, err := db.Exec(`DROP TRIGGER ` + trg); err != nil {
			t.Fatal(err)
		}
	}
	return db
}

func TestVerifyNamesTheTamperedRow(t *testing.T) {
	cases := []struct {
		name     string
		tamper   string
		badSeq   int64
		inReason string
	}{
		{"details", `UPDATE audit_events SET details = '{"i":999}' WHERE seq = 7`, 7, "does not match the row content"},
		{"actor", `UPDATE audit_events SET actor = 'b' WHERE seq = 4`, 4, "does not match the row content"},
		{"time", `UPDATE audit_events SET time = '2020-01-01T00:00:00.000000000Z' WHERE seq = 9`, 9, "does not match"},
		{"one byte of the hash", `UPDATE audit_events SET hash = zeroblob(32) WHERE seq = 5`, 5, "does not match"},
		{"link", `UPDATE audit_events SET prev_hash = zeroblob(32) WHERE seq = 6`, 6, "prev_hash"},
		{"deleted row", `DELETE FROM audit_events WHERE seq = 3`, 3, "missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, st := newLog(t)
			appendN(t, l, 10)
			if _, err := rawConn(t, st).Exec(c.tamper); err != nil {
				t.Fatal(err)
			}
			res, err := audit.Verify(context.Background(), st, 1, 0)
			if err != nil {
				t.Fatal(err)
			}
			if res.FirstBad != c.badSeq || !strings.Contains(res.Reason, c.inReason) {
				t.Fatalf("got first bad %d (%s), want %d containing %q", res.FirstBad, res.Reason, c.badSeq, c.inReason)
			}
			if res.Checked != c.badSeq-1 {
				t.Fatalf("checked %d rows before the bad one, want %d", res.Checked, c.badSeq-1)
			}
		})
	}
}

func TestVerifySubRange(t *testing.T) {
	l, st := newLog(t)
	appendN(t, l, 10)
	res, err := audit.Verify(context.Background(), st, 4, 8)
	if err != nil || !res.OK() || res.Checked != 5 {
		t.Fatalf("%+v %v", res, err)
	}
	// Asking beyond the head reports the first missing row.
	res, _ = audit.Verify(context.Background(), st, 1, 12)
	if res.FirstBad != 11 {
		t.Fatalf("%+v", res)
	}
}

func TestAppendFailsClosedWhenTheFileIsGone(t *testing.T) {
	l, st := newLog(t)
	appendN(t, l, 1)
	moved := st.Path() + ".moved"
	if err := rename(st.Path(), moved); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(context.Background(), audit.Event{Type: "t.lost", Actor: "a"}); err == nil {
		t.Fatal("append acknowledged a row written to a deleted database file")
	}
	if err := rename(moved, st.Path()); err != nil {
		t.Fatal(err)
	}
	r, err := l.Append(context.Background(), audit.Event{Type: "t.back", Actor: "a"})
	if err != nil || r.Seq != 2 {
		t.Fatalf("after restore: %+v %v", r, err)
	}
}

func TestAppendAfterCloseFails(t *testing.T) {
	l, _ := newLog(t)
	l.Close()
	if _, err := l.Append(context.Background(), audit.Event{Type: "t.x", Actor: "a"}); err != audit.ErrClosed {
		t.Fatalf("got %v", err)
	}
}

// Close while appenders are committing: every Append either returns a
// row that is in the database or ErrClosed, none hangs, and the chain
// stays valid.
func TestCloseUnderLoadLosesNoAcknowledgedRow(t *testing.T) {
	l, st := newLog(t)
	ctx := context.Background()
	var mu sync.Mutex
	var acked []int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				r, err := l.Append(ctx, audit.Event{Type: "t.load", Actor: "a"})
				if err == audit.ErrClosed {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked = append(acked, r.Seq)
				mu.Unlock()
			}
		}()
	}
	for {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 200 {
			break
		}
		runtime.Gosched()
	}
	l.Close()
	wg.Wait()
	var rows int64
	if err := st.Raw().QueryRow(`SELECT COUNT(*) FROM audit_events`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != int64(len(acked)) {
		t.Fatalf("%d rows acknowledged, %d in the database", len(acked), rows)
	}
	res, err := audit.Verify(ctx, st, 0, 0)
	if err != nil || res.FirstBad != 0 {
		t.Fatalf("chain after close: %+v %v", res, err)
	}
}

func TestRowsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mastio.db")
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	l := audit.Open(st, audit.Options{Now: func() time.Time { return time.Unix(1700000000, 123456789) }})
	r, err := l.Append(context.Background(), audit.Event{Type: "t.durable", Actor: "a"})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	st.Close()
	reopened := openDB(t, path)
	var ts string
	reopened.Raw().QueryRow(`SELECT time FROM audit_events WHERE seq = ?`, r.Seq).Scan(&ts)
	if ts != "2023-11-14T22:13:20.123456789Z" {
		t.Fatalf("stored time %q", ts)
	}
}

func TestHashMatchesJCSForAwkwardStrings(t *testing.T) {
	l, _ := newLog(t)
	actor := "agent:\"quoted\" <&> \u2028 é \x01 \U0001F600 \\"
	r, err := l.Append(context.Background(), audit.Event{Type: "t.odd", Actor: actor, Subject: "\t\n",
		Details: map[string]any{"\U0001F600": 1, "\ufb33": 2, "n": 1.50}})
	if err != nil {
		t.Fatal(err)
	}
	row := map[string]any{"seq": r.Seq, "time": r.Time.UTC().Format(audit.TimeFormat), "event_type": "t.odd",
		"actor": actor, "subject": "\t\n", "result": "ok", "details": json.RawMessage(r.Details)}
	canon, err := jcs.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(append(append([]byte(nil), r.PrevHash...), canon...))
	if string(want[:]) != string(r.Hash) {
		t.Fatalf("stored hash differs from SHA-256(prev ‖ JCS(row)) for %s", canon)
	}
}

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

// TestVerifyReportsForwardedCallsWithoutOutcome: an mcp.forward row whose
// mcp.call row (naming it in forward_seq) never came is "outcome
// unknown", which does not break the chain; a call refused before
// forwarding (no forward_seq) pairs with nothing.
func TestVerifyReportsForwardedCallsWithoutOutcome(t *testing.T) {
	st := openDB(t, filepath.Join(t.TempDir(), "mastio.db"))
	l := audit.Open(st, audit.Options{})
	defer l.Close()
	ctx := context.Background()
	for _, ev := range []audit.Event{
		{Type: audit.TypeMCPForward, Actor: "agent:a", Details: map[string]any{"name": "x"}},                    // 1, answered below
		{Type: audit.TypeMCPForward, Actor: "agent:a", Details: map[string]any{"name": "y"}},                    // 2, outcome lost
		{Type: audit.TypeMCPCall, Actor: "agent:a", Details: map[string]any{"outcome": "ok", "forward_seq": 1}}, // 3
		{Type: audit.TypeMCPCall, Actor: "agent:a", Details: map[string]any{"outcome": "denied"}},               // 4
		{Type: audit.TypeMCPForward, Actor: "agent:a", Details: map[string]any{"name": "z"}},                    // 5, outcome lost
		{Type: "t.other", Actor: "a", Details: map[string]any{"forward_seq": 5}},                                // 6, not an mcp.call
	} {
		if _, err := l.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	res, err := audit.Verify(ctx, st, 1, 0)
	if err != nil || !res.OK() {
		t.Fatalf("%+v %v", res, err)
	}
	if res.Unknown.Count != 2 || fmt.Sprint(res.Unknown.Seqs) != "[2 5]" {
		t.Fatalf("outcome unknown: %+v, want seqs 2 and 5", res.Unknown)
	}
	if res, _ := audit.Verify(ctx, st, 3, 0); res.Unknown.Count != 1 {
		t.Fatalf("from seq 3: %+v, want only seq 5", res.Unknown)
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
