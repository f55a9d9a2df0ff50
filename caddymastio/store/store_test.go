package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/internal/testutil"
)

func openTemp(t *testing.T) (*Store, string) {
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
		if err := s.DB().QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name=?`, table).Scan(&n); err != nil || n != 1 {
			t.Errorf("table %s: n=%d err=%v", table, n, err)
		}
	}
	var mode string
	if err := s.DB().QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v", mode, err)
	}
	var fk, sync int
	s.DB().QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk)
	s.DB().QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&sync)
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
	if err := s.SetConfig(ctx, "org_id", "abc"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("re-open: %v", err)
	}
	defer s2.Close()
	var n int
	s2.DB().QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
	if n != len(migrations) {
		t.Errorf("schema_migrations has %d rows, want %d (no migration re-applied)", n, len(migrations))
	}
	if v, ok, _ := s2.GetConfig(ctx, "org_id"); !ok || v != "abc" {
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
	if _, err := s.DB().Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'from the future', 'x')`, LatestVersion()+5); err != nil {
		t.Fatal(err)
	}
	s.Close()
	_, err = Open(ctx, path)
	if !errors.Is(err, ErrSchemaTooNew) {
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
	s.DB().QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = 'extra'`).Scan(&n)
	if n != 0 {
		t.Error("the good step of a failed migration run was left applied")
	}
}

func TestInitConfigKeepsFirstValue(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	v, err := s.InitConfig(ctx, "org_id", "first")
	if err != nil || v != "first" {
		t.Fatalf("%q %v", v, err)
	}
	v, err = s.InitConfig(ctx, "org_id", "second")
	if err != nil || v != "first" {
		t.Fatalf("second InitConfig returned %q %v, want first", v, err)
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
	var he *HealthError
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
	var he *HealthError
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
	use := func(s *Store, key string, exp time.Time) bool {
		t.Helper()
		tx, err := s.DB().BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		fresh, err := UseOnce(ctx, tx, key, exp)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
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
	if !use(s, "gone", time.Now().Add(-time.Second)) || !use(s, "gone", soon) {
		t.Fatal("an expired key is still remembered")
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
	if n, err := s.PurgeUsed(ctx); err != nil || n != 0 {
		t.Fatalf("purge: %d %v", n, err)
	}
}
