package sqlite

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/storetest"
	"github.com/caddy-mastio/caddy-mastio/internal/testutil"
)

func openTemp(t *testing.T) (*DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mastio.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestOpenFreshAppliesAllMigrations(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	v, err := s.SchemaVersion(ctx)
	if err != nil || v != LatestVersion() {
		t.Fatalf("schema version = %d, %v; want %d", v, err, LatestVersion())
	}
	for _, table := range []string{"config", "agents", "agent_certs", "enrollments", "signing_keys", "audit_events"} {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name=?`, table).Scan(&n); err != nil || n != 1 {
			t.Errorf("table %s: n=%d err=%v", table, n, err)
		}
	}
	var mode string
	if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v", mode, err)
	}
	var fk, sync int
	s.db.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk)
	s.db.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync)
	if fk != 1 || sync != 2 {
		t.Errorf("foreign_keys=%d synchronous=%d, want 1 and 2 (FULL)", fk, sync)
	}
	for _, f := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", filepath.Base(f), fi.Mode().Perm())
		}
	}
}

func TestOpenTwiceIsIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mastio.db")
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, func(tx store.Tx) error { return tx.SetConfig(ctx, "org_id", "abc") }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("re-open: %v", err)
	}
	defer s2.Close()
	var n int
	s2.db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
	if n != len(migrations) {
		t.Errorf("schema_migrations has %d rows, want %d (no migration re-applied)", n, len(migrations))
	}
	if v, ok, _ := s2.Config(ctx, "org_id"); !ok || v != "abc" {
		t.Errorf("config lost across re-open: %q %v", v, ok)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mastio.db")
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', 'x')`, LatestVersion()+5); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(ctx, path)
	if !errors.Is(err, store.ErrSchemaTooNew) {
		t.Fatalf("want ErrSchemaTooNew, got %v", err)
	}
	if want := filepath.Base(path); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the database file", err)
	}
}

func TestFailedMigrationChangesNothing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mastio.db")
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	saved := migrations
	t.Cleanup(func() { migrations = saved })
	migrations = append(append([]migration(nil), saved...),
		migration{LatestVersion() + 1, "good step", `CREATE TABLE extra (x INTEGER)`},
		migration{LatestVersion() + 2, "broken step", `CREATE TABLE nope (`})
	if _, err := Open(ctx, path); err == nil || !strings.Contains(err.Error(), "broken step") {
		t.Fatalf("want an error naming the broken migration, got %v", err)
	}
	migrations = saved
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	s.db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'extra'`).Scan(&n)
	if n != 0 {
		t.Error("the good step of a failed migration run was left applied")
	}
}

func TestCheckDetectsDeletedAndReplacedFile(t *testing.T) {
	s, path := openTemp(t)
	ctx := context.Background()
	s.probeTTL = 0
	if err := s.Check(ctx); err != nil {
		t.Fatalf("healthy store: %v", err)
	}
	moved := path + ".moved"
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	var he *store.HealthError
	if err := s.Check(ctx); !errors.As(err, &he) || he.Reason != "missing" {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the probe re-created a database file where the real one was removed")
	}
	if err := os.Rename(moved, path); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("after restore: %v", err)
	}
	// Replace with a different file of the same name.
	data, _ := os.ReadFile(path)
	os.Rename(path, moved)
	os.WriteFile(path, data, 0o600)
	if err := s.Check(ctx); !errors.As(err, &he) || he.Reason != "replaced" {
		t.Fatalf("after replace: %v", err)
	}
}

func TestCheckDetectsUnwritableFile(t *testing.T) {
	if os.Geteuid() == 0 {
		// Root ignores file modes, so run this test again as nobody.
		testutil.RerunUnprivileged(t)
		return
	}
	s, path := openTemp(t)
	s.probeTTL = 0
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("healthy store: %v", err)
	}
	os.Chmod(path, 0o400)
	var he *store.HealthError
	if err := s.Check(context.Background()); !errors.As(err, &he) || he.Reason != "not_writable" {
		t.Fatalf("want not_writable, got %v", err)
	}
	os.Chmod(path, 0o600)
	if err := s.Check(context.Background()); err != nil {
		t.Fatalf("after chmod back: %v", err)
	}
}

func TestPostgresURLIsRefusedClearly(t *testing.T) {
	_, err := Open(context.Background(), "postgres://u@localhost/db")
	if err == nil || !strings.Contains(err.Error(), "postgres") {
		t.Fatalf("got %v", err)
	}
}

func TestUseOnceSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "m.db")
	use := func(s *DB, key string, exp time.Time) (fresh bool) {
		t.Helper()
		if err := s.Update(ctx, func(tx store.Tx) (err error) {
			fresh, err = tx.UseOnce(ctx, key, exp)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return fresh
	}
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	soon := time.Now().Add(time.Minute)
	if !use(s, "a", soon) || use(s, "a", soon) {
		t.Fatal("a key was not single-use")
	}
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if use(s, "a", soon) {
		t.Fatal("a used key was forgotten when the database was reopened")
	}
}

// The audit writer asks its own connection for the durability of each
// batch; the store's other connections stay synchronous=FULL.
func TestAuditDurabilityAppliesToTheWriterConnectionOnly(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	w := s.writer
	appendOne := func(d store.Durability) {
		t.Helper()
		err := w.Append(ctx, d, nil, func(h store.AuditHead) ([]store.AuditRow, error) {
			return []store.AuditRow{{Seq: h.Seq + 1, Time: "2026-12-02T00:00:00.000000000Z", Type: "t.x", Actor: "a",
				Result: "ok", Details: []byte("{}"), PrevHash: h.Hash, Hash: []byte{1}}}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	synchronous := func() int {
		var v int
		if err := w.conn.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	appendOne(store.SyncFull)
	if got := synchronous(); got != 2 {
		t.Fatalf("full: synchronous=%d, want 2 (FULL)", got)
	}
	appendOne(store.SyncOS)
	if got := synchronous(); got != 1 {
		t.Fatalf("os: synchronous=%d, want 1 (NORMAL)", got)
	}
	var other int
	if err := s.db.QueryRow("PRAGMA synchronous").Scan(&other); err != nil || other != 2 {
		t.Fatalf("store connection: synchronous=%d (%v), want 2", other, err)
	}
	appendOne(store.SyncFull)
	if got := synchronous(); got != 2 {
		t.Fatalf("back to full: synchronous=%d, want 2", got)
	}
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, _ := openTemp(t)
		return s
	})
}

// TestManualArchiveEditsAreRefused: once rows are archived, a DELETE of any
// row after the anchor and any edit that moves the anchor back, off the
// chain or away is refused by the schema itself, not only by our code.
func TestManualArchiveEditsAreRefused(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	var rows []store.AuditRow
	err := s.Update(ctx, func(tx store.Tx) error {
		h, _ := tx.AuditHead(ctx)
		for i := range 4 {
			r := store.AuditRow{Seq: h.Seq + 1, Time: "2026-12-02T00:00:00.000000000Z", Type: "t.x", Actor: "a",
				Result: "ok", Details: []byte("{}"), PrevHash: h.Hash, Hash: []byte{byte(i + 1)}}
			rows = append(rows, r)
			h = store.AuditHead{Seq: r.Seq, Hash: r.Hash}
		}
		if err := tx.AppendAudit(ctx, rows...); err != nil {
			return err
		}
		_, err := tx.ArchiveAudit(ctx, store.AuditAnchor{Seq: 2, Hash: rows[1].Hash, Time: rows[1].Time, Checkpoint: "jws",
			ArchiveSHA256: "x", ArchivedAt: rows[1].Time})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ sql, want string }{
		{`DELETE FROM audit_events`, "append-only"},
		{`DELETE FROM audit_events WHERE seq = 4`, "append-only"},
		{`UPDATE audit_anchor SET seq = 1, hash = x'01'`, "only moves forward"},
		{`UPDATE audit_anchor SET seq = 3, hash = x'ff'`, "only moves forward"},
		{`DELETE FROM audit_anchor`, "never deleted"},
		{`INSERT INTO audit_anchor VALUES (2, 3, x'03', 't', 'j', 'x', 't')`, "id = 1"}, // one anchor only
	} {
		if _, err := s.db.ExecContext(ctx, c.sql); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.sql, err, c.want)
		}
	}
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_events`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows left: %d %v, want 2", n, err)
	}
}
