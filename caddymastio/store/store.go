// Package store holds the Mastio's persistent state: the schema and its
// migrations, the SQLite connection and the small repositories on top.
//
// SQLite runs in WAL mode with synchronous=FULL (an acknowledged commit
// survives power loss), a busy timeout, foreign keys on and BEGIN IMMEDIATE
// transactions, so concurrent writers queue instead of failing.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver (pure Go, no cgo)
)

// TimeFormat is how every timestamp is stored: RFC 3339, UTC, fixed
// nanosecond width so that text order is time order.
const TimeFormat = "2006-01-02T15:04:05.000000000Z"

// FormatTime formats t in TimeFormat.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

// ErrSchemaTooNew is returned by Open when the database was written by a
// newer caddy-mastio than this one.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary supports")

// Store is an open Mastio database.
type Store struct {
	db   *sql.DB
	path string
	id   fileID

	probeMu   sync.Mutex
	probeAt   time.Time
	probeErr  error
	probeTTL  time.Duration
	probeConn *sql.DB
}

// Open opens (creating if needed, mode 0600) the SQLite database at path
// and brings its schema up to date.
func Open(ctx context.Context, path string) (*Store, error) {
	if strings.HasPrefix(path, "postgres://") || strings.HasPrefix(path, "postgresql://") {
		return nil, errors.New("postgres databases are not supported by this build yet; use a SQLite file path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("database path %q: %w", path, err)
	}
	// Create the file ourselves so it starts 0600; SQLite gives the -wal and
	// -shm files the same mode as the database file.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening database file %s: %w", abs, err)
	}
	_ = f.Close()
	if err := os.Chmod(abs, 0o600); err != nil {
		return nil, fmt.Errorf("setting mode 0600 on %s: %w", abs, err)
	}

	db, err := sql.Open("sqlite", dsn(abs, false))
	if err != nil {
		return nil, fmt.Errorf("opening database %s: %w", abs, err)
	}
	s := &Store{db: db, path: abs, probeTTL: time.Second}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if err := os.Chmod(abs+suffix, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			db.Close()
			return nil, fmt.Errorf("setting mode 0600 on %s%s: %w", abs, suffix, err)
		}
	}
	if s.id, err = statID(abs); err != nil {
		db.Close()
		return nil, fmt.Errorf("database file %s: %w", abs, err)
	}
	return s, nil
}

// Peek reads, without changing anything, the config values named by keys
// of the database at path (absent keys are left out) and its schema
// version; a database written by a newer binary is ErrSchemaTooNew. It is
// what a configuration check (caddy validate) may do with the database.
func Peek(ctx context.Context, path string, keys ...string) (map[string]string, int, error) {
	u := url.URL{Scheme: "file", Path: path, OmitHost: true}
	db, err := sql.Open("sqlite", u.String()+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, 0, fmt.Errorf("opening database %s: %w", path, err)
	}
	defer db.Close()
	var version int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		if strings.Contains(err.Error(), "no such table") {
			return map[string]string{}, 0, nil // an empty database file
		}
		return nil, 0, fmt.Errorf("reading database %s: %w", path, err)
	}
	if version > LatestVersion() {
		return nil, version, fmt.Errorf("%w: database %s is at schema version %d, this binary knows up to %d; "+
			"run the caddy-mastio release that wrote it, or restore a backup taken before the upgrade",
			ErrSchemaTooNew, path, version, LatestVersion())
	}
	out := map[string]string{}
	for _, k := range keys {
		var v string
		switch err := db.QueryRowContext(ctx, `SELECT value FROM config WHERE key = ?`, k).Scan(&v); {
		case err == nil:
			out[k] = v
		case errors.Is(err, sql.ErrNoRows):
		default:
			return nil, version, fmt.Errorf("reading database %s: %w", path, err)
		}
	}
	return out, version, nil
}

// dsn builds the modernc DSN. With mustExist the file is opened read-write
// without creating it (the readiness probe must not conjure up an empty
// database where the real one was deleted).
func dsn(path string, mustExist bool) string {
	u := url.URL{Scheme: "file", Path: path, OmitHost: true}
	q := "_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)" +
		"&_pragma=synchronous(FULL)&_txlock=immediate"
	if mustExist {
		q += "&mode=rw"
	}
	return u.String() + "?" + q
}

// DB returns the underlying handle for repositories in other packages
// (audit, token, ...).
func (s *Store) DB() *sql.DB { return s.db }

// Path returns the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Close closes the database.
func (s *Store) Close() error {
	s.probeMu.Lock()
	if s.probeConn != nil {
		s.probeConn.Close()
		s.probeConn = nil
	}
	s.probeMu.Unlock()
	return s.db.Close()
}

func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("database %s: starting migration: %w", s.path, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return fmt.Errorf("database %s: creating schema_migrations: %w", s.path, err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("database %s: reading schema version: %w", s.path, err)
	}
	if current > LatestVersion() {
		return fmt.Errorf("%w: database %s is at schema version %d, this binary knows up to %d; "+
			"run the caddy-mastio release that wrote it, or restore a backup taken before the upgrade",
			ErrSchemaTooNew, s.path, current, LatestVersion())
	}
	now := FormatTime(time.Now())
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("database %s: applying migration %d (%s): %w", s.path, m.version, m.name, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
			m.version, m.name, now); err != nil {
			return fmt.Errorf("database %s: recording migration %d: %w", s.path, m.version, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("database %s: committing migrations: %w", s.path, err)
	}
	return nil
}

// SchemaVersion returns the version recorded in schema_migrations.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}
