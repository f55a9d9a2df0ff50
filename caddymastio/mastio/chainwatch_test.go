package mastio

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// started is a started Mastio on a fresh data directory, with a second
// connection to its database for tampering.
func started(t *testing.T) (*Mastio, *sql.DB) {
	t.Helper()
	dir := t.TempDir()
	db := filepath.Join(dir, "mastio.db")
	s, err := Prepare(Location{DataDir: dir, Database: Database(db)}, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	secret, _ := NewSecret("3f9c2a7d41b8e6054c1d9a2f7e8b3c61")
	m, _ := s.With(Settings{AdminSecret: secret, AuditVerifyInterval: 1 << 62}, zap.NewNop()) // walks by hand only
	if err := m.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	raw, err := sql.Open("sqlite", "file:"+db+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if _, err := raw.Exec(`DROP TRIGGER audit_events_no_update`); err != nil {
		t.Fatal(err)
	}
	return m, raw
}

func appendRows(t *testing.T, m *Mastio, n int) {
	t.Helper()
	for i := range n {
		if _, err := m.audit.Append(t.Context(), audit.Event{Type: "test.row", Actor: "system", Subject: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
}

func walk(t *testing.T, m *Mastio) *ChainBreak {
	t.Helper()
	if err := m.VerifyNewAuditRows(t.Context()); err != nil {
		t.Fatal(err)
	}
	return m.ChainBreak()
}

// A changed old row is found by the scrub within rows/scrubN walks; the
// break shows in readiness until the row is put back.
func TestVerifierScrubFindsAChangedOldRow(t *testing.T) {
	m, raw := started(t)
	m.chain.scrubN = 5
	appendRows(t, m, 30)
	if b := walk(t, m); b != nil {
		t.Fatalf("a fresh chain: %+v", b)
	}
	head, _, _ := m.audit.Head(t.Context())
	var subject string
	raw.QueryRow(`SELECT subject FROM audit_events WHERE seq = 17`).Scan(&subject)
	if _, err := raw.Exec(`UPDATE audit_events SET subject = 'changed' WHERE seq = 17`); err != nil {
		t.Fatal(err)
	}
	var found *ChainBreak
	walks := 0
	for ; found == nil && walks <= int(head)/5+1; walks++ {
		appendRows(t, m, 1)
		found = walk(t, m)
	}
	if found == nil || found.Seq != 17 {
		t.Fatalf("after %d walks: %+v, want a break at seq 17", walks, found)
	}
	if walks < 2 {
		t.Fatalf("found at the first walk: the scrub should have started before row 17")
	}
	r := m.Readiness(t.Context())
	if r.Ready() || r.Reasons["audit_chain"] != "broken_at_seq_17" {
		t.Fatalf("readiness with a break: %+v", r)
	}
	if _, err := raw.Exec(`UPDATE audit_events SET subject = ? WHERE seq = 17`, subject); err != nil {
		t.Fatal(err)
	}
	if b := walk(t, m); b != nil {
		t.Fatalf("after the repair: %+v", b)
	}
	if r := m.Readiness(t.Context()); !r.Ready() {
		t.Fatalf("readiness after the repair: %+v", r)
	}
}

// Rows rewritten with their hashes through the head are found at the next
// walk: the verifier keeps the hash it verified, not the file's.
func TestVerifierFindsARewrittenHead(t *testing.T) {
	m, raw := started(t)
	appendRows(t, m, 3)
	if b := walk(t, m); b != nil {
		t.Fatalf("a fresh chain: %+v", b)
	}
	head, _, _ := m.audit.Head(t.Context())
	if _, err := raw.Exec(`UPDATE audit_events SET hash = zeroblob(32) WHERE seq = ?`, head); err != nil {
		t.Fatal(err)
	}
	if b := walk(t, m); b == nil || b.Seq != head {
		t.Fatalf("a rewritten head: %+v, want a break at seq %d", b, head)
	}
}

// An archive that removes the rows the verifier walked is no break.
func TestVerifierFollowsAnArchive(t *testing.T) {
	m, _ := started(t)
	m.chain.scrubN = 2
	appendRows(t, m, 10)
	if b := walk(t, m); b != nil {
		t.Fatalf("a fresh chain: %+v", b)
	}
	var through int64
	var hash []byte
	audit.Read(t.Context(), m.store, 6, 6, func(r audit.Record) error { through, hash = r.Seq, r.Hash; return nil })
	if _, err := m.ArchiveAudit(t.Context(), through, fmt.Sprintf("%x", hash), fmt.Sprintf("%064x", 1), nil); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		appendRows(t, m, 1)
		if b := walk(t, m); b != nil {
			t.Fatalf("after an archive: %+v", b)
		}
	}
}
