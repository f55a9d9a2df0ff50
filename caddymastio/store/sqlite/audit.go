package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

const insertAuditSQL = `INSERT INTO audit_events (seq, time, event_type, actor, subject, result, details, prev_hash, hash)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`

func auditArgs(r store.AuditRow) []any {
	return []any{r.Seq, r.Time, r.Type, r.Actor, r.Subject, r.Result, string(r.Details), r.PrevHash, r.Hash}
}

type rowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func auditHead(ctx context.Context, q rowQuerier) (store.AuditHead, error) {
	var h store.AuditHead
	// The newest row; when an archive removed every row, the anchor.
	err := q.QueryRowContext(ctx, `SELECT seq, hash FROM (
		SELECT seq, hash FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1)
		UNION ALL SELECT seq, hash FROM audit_anchor) ORDER BY seq DESC LIMIT 1`).Scan(&h.Seq, &h.Hash)
	if errors.Is(err, sql.ErrNoRows) {
		return store.AuditHead{Hash: bytes.Clone(store.GenesisHash)}, nil
	}
	if err != nil {
		return h, fmt.Errorf("audit: reading chain head: %w", err)
	}
	return h, nil
}

// AuditHead implements store.Reader.
func (r reader) AuditHead(ctx context.Context) (store.AuditHead, error) { return auditHead(ctx, r.q) }

// AuditRows implements store.Reader.
func (r reader) AuditRows(ctx context.Context, f store.AuditFilter, fn func(store.AuditRow) error) error {
	q := `SELECT seq, time, event_type, actor, subject, result, details, prev_hash, hash FROM audit_events WHERE seq >= ?`
	args := []any{max(f.From, 1)}
	if f.To > 0 {
		q, args = q+` AND seq <= ?`, append(args, f.To)
	}
	// Stored times are fixed-width RFC 3339 in UTC: they compare as text.
	if !f.Since.IsZero() {
		q, args = q+` AND time >= ?`, append(args, f.Since.UTC().Format(TimeFormat))
	}
	if !f.Before.IsZero() {
		q, args = q+` AND time < ?`, append(args, f.Before.UTC().Format(TimeFormat))
	}
	if f.Type != "" {
		q, args = q+` AND event_type = ?`, append(args, f.Type)
	}
	if f.Actor != "" {
		q, args = q+` AND actor = ?`, append(args, f.Actor)
	}
	q += ` ORDER BY seq`
	if f.Limit > 0 {
		q, args = q+` LIMIT ?`, append(args, f.Limit)
	}
	rows, err := r.q.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("audit: reading rows: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var row store.AuditRow
		var details string
		if err := rows.Scan(&row.Seq, &row.Time, &row.Type, &row.Actor, &row.Subject, &row.Result, &details, &row.PrevHash, &row.Hash); err != nil {
			return fmt.Errorf("audit: reading row: %w", err)
		}
		row.Details = []byte(details)
		if err := fn(row); err != nil {
			return err
		}
	}
	return rows.Err()
}

// AuditAnchor implements store.Reader.
func (r reader) AuditAnchor(ctx context.Context) (store.AuditAnchor, error) {
	var a store.AuditAnchor
	err := r.q.QueryRowContext(ctx, `SELECT seq, hash, time, checkpoint, archive_sha256, archived_at FROM audit_anchor`).
		Scan(&a.Seq, &a.Hash, &a.Time, &a.Checkpoint, &a.ArchiveSHA256, &a.ArchivedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return store.AuditAnchor{}, nil
	}
	if err != nil {
		return a, fmt.Errorf("audit: reading the archive anchor: %w", err)
	}
	return a, nil
}

// ArchiveAudit implements store.Tx.
func (t *tx) ArchiveAudit(ctx context.Context, a store.AuditAnchor) (int64, error) {
	var hash []byte
	err := t.tx.QueryRowContext(ctx, `SELECT hash FROM audit_events WHERE seq = ?`, a.Seq).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("audit: archiving up to row %d: %w", a.Seq, store.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("audit: archiving up to row %d: %w", a.Seq, err)
	}
	if !bytes.Equal(hash, a.Hash) {
		return 0, fmt.Errorf("audit: archiving up to row %d: its hash differs: %w", a.Seq, store.ErrConflict)
	}
	if _, err := t.tx.ExecContext(ctx, `INSERT INTO audit_anchor (id, seq, hash, time, checkpoint, archive_sha256, archived_at)
		VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
		time = excluded.time, checkpoint = excluded.checkpoint, archive_sha256 = excluded.archive_sha256,
		archived_at = excluded.archived_at`,
		a.Seq, a.Hash, a.Time, a.Checkpoint, a.ArchiveSHA256, a.ArchivedAt); err != nil {
		return 0, fmt.Errorf("audit: setting the archive anchor: %w", err)
	}
	res, err := t.tx.ExecContext(ctx, `DELETE FROM audit_events WHERE seq <= ?`, a.Seq)
	if err != nil {
		return 0, fmt.Errorf("audit: removing archived rows: %w", err)
	}
	return res.RowsAffected()
}

// AppendAudit implements store.Tx.
func (t *tx) AppendAudit(ctx context.Context, rows ...store.AuditRow) error {
	for _, r := range rows {
		if _, err := t.tx.ExecContext(ctx, insertAuditSQL, auditArgs(r)...); err != nil {
			return fmt.Errorf("audit: inserting row %d: %w", r.Seq, err)
		}
	}
	return nil
}

// auditWriter is the group-commit writer's path: one connection kept for
// it with its INSERT and transaction statements prepared, instead of a
// pooled connection and a fresh prepare for every batch.
type auditWriter struct {
	db *DB

	mu                 sync.Mutex // one batch at a time
	conn               *sql.Conn
	insert             *sql.Stmt
	begin, end, rewind *sql.Stmt // BEGIN IMMEDIATE, COMMIT, ROLLBACK
	connSync           store.Durability
}

func (w *auditWriter) connect(ctx context.Context) error {
	if w.conn != nil {
		return nil
	}
	conn, err := w.db.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("audit: connecting: %w", err)
	}
	w.conn = conn
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{{&w.insert, insertAuditSQL}, {&w.begin, "BEGIN IMMEDIATE"}, {&w.end, "COMMIT"}, {&w.rewind, "ROLLBACK"}} {
		if *p.stmt, err = conn.PrepareContext(ctx, p.sql); err != nil {
			w.drop()
			return fmt.Errorf("audit: preparing %q: %w", p.sql, err)
		}
	}
	return nil
}

// drop closes the connection; the next batch opens another.
func (w *auditWriter) drop() {
	for _, st := range []*sql.Stmt{w.insert, w.begin, w.end, w.rewind} {
		if st != nil {
			st.Close()
		}
	}
	if w.conn != nil {
		w.conn.Close()
	}
	w.conn, w.insert, w.begin, w.end, w.rewind = nil, nil, nil, nil, nil
	w.connSync = store.SyncFull // a new connection starts with the DSN's synchronous=FULL
}

// Close implements store.AuditWriter.
func (w *auditWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.drop()
	return nil
}

// Append implements store.AuditWriter.
func (w *auditWriter) Append(ctx context.Context, d store.Durability, head *store.AuditHead,
	build func(store.AuditHead) ([]store.AuditRow, error)) (err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.connect(ctx); err != nil {
		return err
	}
	if d != w.connSync {
		pragma := "PRAGMA synchronous=FULL"
		if d == store.SyncOS {
			pragma = "PRAGMA synchronous=NORMAL"
		}
		if _, err := w.conn.ExecContext(ctx, pragma); err != nil {
			w.drop()
			return fmt.Errorf("audit: %s: %w", pragma, err)
		}
		w.connSync = d
	}
	if _, err := w.begin.ExecContext(ctx); err != nil {
		w.drop()
		return fmt.Errorf("audit: begin: %w", err)
	}
	done := false
	defer func() {
		if !done && w.rewind != nil {
			if _, rerr := w.rewind.ExecContext(ctx); rerr != nil {
				w.drop() // a connection in an unknown state is not reused
			}
		}
	}()
	// The write lock is held from here: the head read now is the chain's.
	h := store.AuditHead{}
	if head != nil {
		h = *head
	} else if h, err = auditHead(ctx, w.conn); err != nil {
		return err
	}
	rows, err := build(h)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := w.insert.ExecContext(ctx, auditArgs(r)...); err != nil {
			return fmt.Errorf("audit: inserting row %d: %w", r.Seq, err)
		}
	}
	if err := w.db.CheckFile(); err != nil {
		return fmt.Errorf("audit: not committing: %w", err)
	}
	if _, err := w.end.ExecContext(ctx); err != nil {
		return fmt.Errorf("audit: commit: %w", err)
	}
	done = true
	return nil
}
