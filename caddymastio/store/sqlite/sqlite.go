// Package sqlite is the embedded store (package store's contract) on one
// SQLite file, through modernc.org/sqlite (pure Go, no cgo): the schema
// and its migrations, and every SQL statement of the Mastio.
//
// SQLite runs in WAL mode with synchronous=FULL (an acknowledged commit
// survives power loss), a busy timeout, foreign keys on and BEGIN IMMEDIATE
// transactions, so concurrent writers queue instead of failing and an
// Update is serializable.
package sqlite

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

	"modernc.org/sqlite" // registers the "sqlite" driver (pure Go, no cgo)
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlstore"
)

// TimeFormat is how every timestamp is stored (see sqlstore).
const TimeFormat = sqlstore.TimeFormat

func formatTime(t time.Time) string { return sqlstore.FormatTime(t) }

// dialect is SQLite's part of the shared statements.
var dialect = &sqlstore.Dialect{IsUnique: func(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return true
		}
	}
	return false
}}

// DB is an open Mastio database.
type DB struct {
	sqlstore.Reader
	db   *sql.DB
	path string
	id   fileID

	writer *auditWriter

	probeMu   sync.Mutex
	probeAt   time.Time
	probeErr  error
	probeTTL  time.Duration
	probeConn *sql.DB
}

// Open opens (creating if needed, mode 0600) the SQLite database at path
// and brings its schema up to date.
func Open(ctx context.Context, path string) (*DB, error) {
	if strings.HasPrefix(path, "postgres://") || strings.HasPrefix(path, "postgresql://") {
		return nil, errors.New("a postgres:// URL is a Postgres database: open it with store/postgres, not as a SQLite file")
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
	s := &DB{Reader: sqlstore.Reader{Q: db, D: dialect}, db: db, path: abs, probeTTL: time.Second}
	s.writer = &auditWriter{db: s}
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
			store.ErrSchemaTooNew, path, version, LatestVersion())
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

// Location is the absolute path of the database file.
func (s *DB) Location() string { return s.path }

// AuditWriter is the audit log's write path.
func (s *DB) AuditWriter() store.AuditWriter { return s.writer }

// Close closes the database.
func (s *DB) Close() error {
	s.writer.Close()
	s.probeMu.Lock()
	if s.probeConn != nil {
		s.probeConn.Close()
		s.probeConn = nil
	}
	s.probeMu.Unlock()
	return s.db.Close()
}

func (s *DB) migrate(ctx context.Context) error {
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
			store.ErrSchemaTooNew, s.path, current, LatestVersion())
	}
	now := formatTime(time.Now())
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
func (s *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// SnapshotTo implements store.Snapshotter with VACUUM INTO: one read
// transaction, so a copy of one instant, taken while writers go on. The
// file is created empty with mode 0600 first (SQLite would create it with
// the process umask, and it holds every record).
func (s *DB) SnapshotTo(ctx context.Context, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	f.Close()
	if _, err := s.db.ExecContext(ctx, `VACUUM INTO ?`, path); err != nil {
		os.Remove(path)
		return fmt.Errorf("snapshot of %s: %w", s.path, err)
	}
	return nil
}

// Update runs fn in one write transaction (BEGIN IMMEDIATE: one writer at
// a time) and commits it if fn returns nil and the file is still the one
// opened.
func (s *DB) Update(ctx context.Context, fn func(store.Tx) error) error {
	t, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("database: begin: %w", err)
	}
	defer t.Rollback()
	if err := fn(&sqlstore.Tx{Reader: sqlstore.Reader{Q: t, D: dialect}}); err != nil {
		return err
	}
	if err := s.CheckFile(); err != nil {
		return fmt.Errorf("database: not committing: %w", err)
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("database: commit: %w", err)
	}
	return nil
}

// Interface guards
var (
	_ store.Store       = (*DB)(nil)
	_ store.Snapshotter = (*DB)(nil)
)

// ReadOnlyDB is a database opened only to be read (a live one or a backup
// copy), for offline tools such as audit verification.
type ReadOnlyDB struct {
	sqlstore.Reader
	db *sql.DB
}

// OpenReadOnly opens the database at path read-only; it changes nothing
// and creates nothing.
func OpenReadOnly(path string) (*ReadOnlyDB, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	u := url.URL{Scheme: "file", Path: path, OmitHost: true}
	db, err := sql.Open("sqlite", u.String()+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return nil, fmt.Errorf("opening database %s: %w", path, err)
	}
	return &ReadOnlyDB{Reader: sqlstore.Reader{Q: db, D: dialect}, db: db}, nil
}

// Close closes the database.
func (r *ReadOnlyDB) Close() error { return r.db.Close() }

// ReaderOn reads the records of a database through a handle its caller
// opened (a tool's or a test's read-only handle).
func ReaderOn(db *sql.DB) store.Reader { return sqlstore.Reader{Q: db, D: dialect} }
