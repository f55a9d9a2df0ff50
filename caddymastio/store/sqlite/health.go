package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// CheckFile reports whether the path still names the file that was opened.
// A database deleted or replaced under a running process would otherwise
// take every later write into an unlinked inode that vanishes at exit, so
// writers call this before acknowledging a commit.
func (s *DB) CheckFile() error {
	id, err := statID(s.path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return &store.HealthError{Reason: "missing", Location: s.path, Err: errors.New("the database file was deleted or moved while in use")}
		}
		return &store.HealthError{Reason: "unavailable", Location: s.path, Err: err}
	}
	if id != s.id {
		return &store.HealthError{Reason: "replaced", Location: s.path, Err: errors.New("the database file was replaced by another file while in use; restart to open it")}
	}
	return nil
}

// Check is the readiness probe: the file must be the one we opened and a
// fresh connection must be able to open it read-write and commit a write,
// which is what fails ("unable to open database file", "attempt to write a
// readonly database", "database is locked", disk full) when permissions
// drift or the disk fills. Results are cached for a second so that a
// readiness endpoint hammered by clients costs at most one write a second.
func (s *DB) Check(ctx context.Context) error {
	s.probeMu.Lock()
	defer s.probeMu.Unlock()
	if time.Since(s.probeAt) < s.probeTTL {
		return s.probeErr
	}
	s.probeErr = s.probe(ctx)
	s.probeAt = time.Now()
	return s.probeErr
}

func (s *DB) probe(ctx context.Context) error {
	if err := s.CheckFile(); err != nil {
		return err
	}
	// SQLite keeps read-write descriptors of a file open in this process and
	// hands them to new connections, so a reopen below would not notice that
	// the file's permissions changed. Ask the kernel directly (access(2)
	// opens nothing, so SQLite's POSIX locks are not disturbed).
	for _, p := range []string{s.path, s.path + "-wal", s.path + "-shm", filepath.Dir(s.path)} {
		if err := writable(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return &store.HealthError{Reason: "not_writable", Location: s.path, Err: fmt.Errorf("%s: %w", p, err)}
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	// A dedicated handle with no idle connections: every probe opens the
	// file anew, as a restarted process or a new pool connection would.
	if s.probeConn == nil {
		db, err := sql.Open("sqlite", dsn(s.path, true)+"&_pragma=busy_timeout(2000)")
		if err != nil {
			return &store.HealthError{Reason: "unavailable", Location: s.path, Err: err}
		}
		db.SetMaxIdleConns(0)
		db.SetMaxOpenConns(1)
		s.probeConn = db
	}
	tx, err := s.probeConn.BeginTx(ctx, nil)
	if err != nil {
		return classify(s.path, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO health_probe (id, checked_at) VALUES (1, ?)
		ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at`, formatTime(time.Now())); err != nil {
		return classify(s.path, err)
	}
	if err := tx.Commit(); err != nil {
		return classify(s.path, err)
	}
	return nil
}

func classify(path string, err error) error {
	msg := strings.ToLower(err.Error())
	reason := "unavailable"
	switch {
	case strings.Contains(msg, "readonly") || strings.Contains(msg, "read-only") ||
		strings.Contains(msg, "unable to open") || strings.Contains(msg, "permission"):
		reason = "not_writable"
	case strings.Contains(msg, "locked") || strings.Contains(msg, "busy"):
		reason = "locked"
	}
	return &store.HealthError{Reason: reason, Location: path, Err: err}
}

// SetProbeTTL changes how long a readiness result is reused (default one
// second). Tests set it to zero.
func (s *DB) SetProbeTTL(d time.Duration) {
	s.probeMu.Lock()
	s.probeTTL = d
	s.probeMu.Unlock()
}
