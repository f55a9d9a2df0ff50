package storetest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// testAuditFilter appends six rows (types a and b, actors x and y, a
// minute apart) and reads them back through each field of the filter.
func testAuditFilter(t *testing.T, st store.Store) {
	update(t, st, func(tx store.Tx) error {
		h, err := tx.AuditHead(ctx)
		if err != nil {
			return err
		}
		for i := range 6 {
			r := row(h, []string{"t.a", "t.b"}[i%2])
			r.Actor = []string{"x", "y", "y"}[i%3]
			r.Time = ts(time.Duration(i) * time.Minute).Format("2006-01-02T15:04:05.000000000Z")
			if err := tx.AppendAudit(ctx, r); err != nil {
				return err
			}
			h = store.AuditHead{Seq: r.Seq, Hash: r.Hash}
		}
		return nil
	})
	seqs := func(f store.AuditFilter) string {
		var out []string
		if err := st.AuditRows(ctx, f, func(r store.AuditRow) error { out = append(out, fmt.Sprint(r.Seq)); return nil }); err != nil {
			t.Fatal(err)
		}
		return strings.Join(out, ",")
	}
	for _, c := range []struct {
		name string
		f    store.AuditFilter
		want string
	}{
		{"everything", store.AuditFilter{}, "1,2,3,4,5,6"},
		{"seq range", store.AuditSeqs(2, 4), "2,3,4"},
		{"after a seq", store.AuditFilter{From: 5}, "5,6"},
		{"since", store.AuditFilter{Since: ts(2 * time.Minute)}, "3,4,5,6"},
		{"before", store.AuditFilter{Before: ts(2 * time.Minute)}, "1,2"},
		{"type", store.AuditFilter{Type: "t.b"}, "2,4,6"},
		{"actor", store.AuditFilter{Actor: "x"}, "1,4"},
		{"limit", store.AuditFilter{Type: "t.a", Limit: 2}, "1,3"},
		{"all together", store.AuditFilter{From: 2, Since: ts(time.Minute), Before: ts(5 * time.Minute), Actor: "y", Limit: 2}, "2,3"},
	} {
		if got := seqs(c.f); got != c.want {
			t.Errorf("%s: rows %s, want %s", c.name, got, c.want)
		}
	}
}

// testAuditArchive archives a chain of five rows in two steps: the anchor
// moves forward only, to a stored row with the right hash, and the head
// stays the chain's even when the head row itself is removed.
func testAuditArchive(t *testing.T, st store.Store) {
	if a, err := st.AuditAnchor(ctx); err != nil || a.Seq != 0 {
		t.Fatalf("anchor of a fresh store: %+v %v", a, err)
	}
	var rows []store.AuditRow
	update(t, st, func(tx store.Tx) error {
		h, _ := tx.AuditHead(ctx)
		for range 5 {
			r := row(h, "t.row")
			rows = append(rows, r)
			h = store.AuditHead{Seq: r.Seq, Hash: r.Hash}
		}
		return tx.AppendAudit(ctx, rows...)
	})
	anchor := func(r store.AuditRow) store.AuditAnchor {
		return store.AuditAnchor{Seq: r.Seq, Hash: r.Hash, Time: r.Time, Checkpoint: "jws-" + fmt.Sprint(r.Seq),
			ArchiveSHA256: strings.Repeat("ab", 32), ArchivedAt: ts(time.Hour).Format("2006-01-02T15:04:05.000000000Z")}
	}
	archive := func(a store.AuditAnchor) (int64, error) {
		var n int64
		err := st.Update(ctx, func(tx store.Tx) (err error) { n, err = tx.ArchiveAudit(ctx, a); return err })
		return n, err
	}
	seqs := func() string {
		var out []string
		st.AuditRows(ctx, store.AuditFilter{}, func(r store.AuditRow) error { out = append(out, fmt.Sprint(r.Seq)); return nil })
		return strings.Join(out, ",")
	}

	wrong := anchor(rows[3])
	wrong.Hash = []byte("not-hash-4")
	if _, err := archive(wrong); !errors.Is(err, store.ErrConflict) || seqs() != "1,2,3,4,5" {
		t.Fatalf("archiving with a wrong hash: %v, rows %s", err, seqs())
	}
	if n, err := archive(anchor(rows[2])); err != nil || n != 3 || seqs() != "4,5" {
		t.Fatalf("archiving up to 3: %d rows removed, %v, rows left %s", n, err, seqs())
	}
	if a, err := st.AuditAnchor(ctx); err != nil || (a.Seq != 3 || string(a.Hash) != "hash-3" ||
		a.Time != rows[2].Time || a.Checkpoint != "jws-3" || a.ArchiveSHA256 != strings.Repeat("ab", 32) || a.ArchivedAt == "") {
		t.Fatalf("anchor read back: %+v %v", a, err)
	}
	if _, err := archive(anchor(rows[1])); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("archiving an archived row again: %v, want ErrNotFound", err)
	}
	if n, err := archive(anchor(rows[4])); err != nil || n != 2 || seqs() != "" {
		t.Fatalf("archiving up to the head: %d rows removed, %v, rows left %s", n, err, seqs())
	}
	h, err := st.AuditHead(ctx)
	if err != nil || h.Seq != 5 || string(h.Hash) != "hash-5" {
		t.Fatalf("head after archiving every row: %+v %v; want the anchor's seq and hash", h, err)
	}
	update(t, st, func(tx store.Tx) error { return tx.AppendAudit(ctx, row(h, "t.after")) })
	if seqs() != "6" {
		t.Fatalf("rows after appending past the anchor: %s", seqs())
	}
}
