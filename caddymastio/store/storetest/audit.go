package storetest

import (
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
