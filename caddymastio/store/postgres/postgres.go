// Package postgres is the Mastio's store (package store's contract) on a
// PostgreSQL database, through github.com/jackc/pgx/v5, for several Caddy
// instances sharing one registry and one audit chain: the schema of
// store/sqlite, version for version, and the statements of
// store/sqlstore.
//
// Every write transaction (Update, and each batch of the audit writer)
// first takes one transaction-scoped advisory lock, so writes run one at a
// time across every instance: an Update stays serializable as the
// contract says, and the audit chain stays one sequence whoever appends.
package postgres

import (
	"context"
	"crypto/rand"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlstore"
	"github.com/caddy-mastio/caddy-mastio/internal/secreturl"
)

// writeLock is the advisory lock every write transaction takes ("mastio"
// in ASCII).
const writeLock = 0x6d617374696f

// IsURL reports whether a database setting names a Postgres database.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// changesChannel is the LISTEN/NOTIFY channel of announced changes.
const changesChannel = "mastio_changes"

func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// newDialect is Postgres's dialect for one open DB: its announcements
// carry origin, so that its own listener skips them. NOTIFY is
// transactional: delivered when the transaction commits, never before,
// never for a rollback.
func newDialect(origin string) *sqlstore.Dialect {
	return &sqlstore.Dialect{IsUnique: isUnique,
		Announce: func(ctx context.Context, q sqlstore.Querier, kind, subject string) error {
			_, err := q.ExecContext(ctx, `SELECT pg_notify(?, ?)`, changesChannel, kind+"\n"+subject+"\n"+origin)
			return err
		}}
}

// DB is an open Mastio database on Postgres.
type DB struct {
	sqlstore.Reader
	db       *sql.DB
	url      string // with its password: for the feed's own connection, never shown
	location string
	origin   string // this DB's id in its announcements
	dialect  *sqlstore.Dialect
	writer   *auditWriter

	probeMu  sync.Mutex
	probeAt  time.Time
	probeErr error
}

// Open connects to the database at rawURL and brings its schema up to
// date (several instances starting at once migrate one after the other).
func Open(ctx context.Context, rawURL string) (*DB, error) {
	loc := secreturl.Redact(rawURL)
	db, err := sql.Open("pgx", rawURL)
	if err != nil {
		return nil, fmt.Errorf("database %s: %w", loc, err)
	}
	db.SetMaxOpenConns(20)
	db.SetConnMaxIdleTime(5 * time.Minute)
	origin := make([]byte, 8)
	rand.Read(origin)
	s := &DB{db: db, url: rawURL, location: loc, origin: hex.EncodeToString(origin)}
	s.dialect = newDialect(s.origin)
	s.Reader = sqlstore.Reader{Q: sqlstore.Dollars{Q: db}, D: s.dialect}
	s.writer = &auditWriter{db: s}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Location is the database's URL without its password.
func (s *DB) Location() string { return s.location }

// AuditWriter is the audit log's write path.
func (s *DB) AuditWriter() store.AuditWriter { return s.writer }

// Close closes the connections.
func (s *DB) Close() error { return s.db.Close() }

func (s *DB) migrate(ctx context.Context) error {
	t, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("database %s: starting migration: %w", s.location, err)
	}
	defer t.Rollback()
	if _, err := t.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, writeLock); err != nil {
		return fmt.Errorf("database %s: locking for migration: %w", s.location, err)
	}
	if _, err := t.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return fmt.Errorf("database %s: creating schema_migrations: %w", s.location, err)
	}
	var current int
	if err := t.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("database %s: reading schema version: %w", s.location, err)
	}
	if current > LatestVersion() {
		return fmt.Errorf("%w: database %s is at schema version %d, this binary knows up to %d; "+
			"run the caddy-mastio release that wrote it, or restore a backup taken before the upgrade",
			store.ErrSchemaTooNew, s.location, current, LatestVersion())
	}
	now := sqlstore.FormatTime(time.Now())
	for _, m := range migrations {
		if m.version <= current {
			continue
		}
		if _, err := t.ExecContext(ctx, m.sql); err != nil {
			return fmt.Errorf("database %s: applying migration %d (%s): %w", s.location, m.version, m.name, err)
		}
		if _, err := t.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`,
			m.version, m.name, now); err != nil {
			return fmt.Errorf("database %s: recording migration %d: %w", s.location, m.version, err)
		}
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("database %s: committing migrations: %w", s.location, err)
	}
	return nil
}

// SchemaVersion returns the version recorded in schema_migrations.
func (s *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// begin starts a write transaction holding the write lock.
func (s *DB) begin(ctx context.Context) (*sql.Tx, error) {
	t, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("database: begin: %w", unavailable(err))
	}
	if _, err := t.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, writeLock); err != nil {
		t.Rollback()
		return nil, fmt.Errorf("database: taking the write lock: %w", unavailable(err))
	}
	return t, nil
}

// Update runs fn in one write transaction, one at a time across every
// instance, and commits it if fn returns nil.
func (s *DB) Update(ctx context.Context, fn func(store.Tx) error) error {
	t, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer t.Rollback()
	if err := fn(&sqlstore.Tx{Reader: sqlstore.Reader{Q: sqlstore.Dollars{Q: t}, D: s.dialect}}); err != nil {
		return err
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("database: commit: %w", unavailable(err))
	}
	return nil
}

// unavailable marks errors of a database that cannot be reached or used
// as a HealthError, so that callers answer 503: errors that are not the
// server's answer (no connection), and the server's own of the classes
// connection exception (08), insufficient resources (53), operator
// intervention (57: shutting down) and system error (58).
func unavailable(err error) error {
	if err == nil || !IsUnavailable(err) {
		return err
	}
	return &store.HealthError{Reason: "unavailable", Err: err}
}

// IsUnavailable reports an error of a database that cannot be reached or
// used — on any statement, reads included — as opposed to one about the
// statement itself.
func IsUnavailable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "08", "53", "57", "58":
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.Timeout(err) || errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.As(err, new(*store.HealthError))
}

// Check is the readiness probe: a committed write to health_probe, at most
// once a second.
func (s *DB) Check(ctx context.Context) error {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if time.Since(s.probeAt) < time.Second {
		return s.probeErr
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.db.ExecContext(ctx, `INSERT INTO health_probe (id, checked_at) VALUES (1, $1)
		ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at`, sqlstore.FormatTime(time.Now()))
	s.probeErr, s.probeAt = nil, time.Now()
	if err != nil {
		s.probeErr = &store.HealthError{Reason: "unavailable", Location: s.location, Err: err}
	}
	return s.probeErr
}

// Interface guards
var _ store.Store = (*DB)(nil)

// exclusiveLock is the session advisory lock of Exclusive ("mastioX").
const exclusiveLock = 0x6d617374696f58

// Exclusive implements store.Exclusive with a session advisory lock on a
// connection of its own (Updates, which take the write lock, still run).
func (s *DB) Exclusive(ctx context.Context, fn func() error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("database: %w", unavailable(err))
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, exclusiveLock); err != nil {
		return fmt.Errorf("database: taking the exclusive lock: %w", unavailable(err))
	}
	defer conn.ExecContext(context.Background(), `SELECT pg_advisory_unlock($1)`, exclusiveLock)
	return fn()
}

var _ store.Exclusive = (*DB)(nil)
