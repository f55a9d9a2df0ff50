package audit_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jcs"
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
