package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// InsertAuditSQL inserts one audit row (AuditArgs).
const InsertAuditSQL = `INSERT INTO audit_events (seq, time, event_type, actor, subject, result, details, prev_hash, hash)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`

// AuditArgs are the arguments of InsertAuditSQL for r.
func AuditArgs(r store.AuditRow) []any {
	return AppendAuditArgs(nil, r)
}

// AppendAuditArgs appends r's arguments of InsertAuditSQL (or of one row
// of InsertAuditRowsSQL) to args.
func AppendAuditArgs(args []any, r store.AuditRow) []any {
	return append(args, r.Seq, r.Time, r.Type, r.Actor, r.Subject, r.Result, string(r.Details), r.PrevHash, r.Hash)
}

// InsertAuditRowsSQL inserts n audit rows in one statement (their
// AppendAuditArgs one after the other).
func InsertAuditRowsSQL(n int) string {
	var b strings.Builder
	b.WriteString(InsertAuditSQL)
	for range n - 1 {
		b.WriteString(", (?, ?, ?, ?, ?, ?, ?, ?, ?)")
	}
	return b.String()
}

// InsertAuditRows inserts a batch's rows in as few statements of at most
// chunk rows as it can, each through exec(n, args) running
// InsertAuditRowsSQL(n): a statement is a driver round trip (with
// Postgres, a network one), costing about as much as the rows it carries.
// args is reused; exec must not keep it.
func InsertAuditRows(rows []store.AuditRow, chunk int, exec func(n int, args []any) error) error {
	args := make([]any, 0, 9*min(len(rows), chunk))
	for len(rows) > 0 {
		part := rows[:min(len(rows), chunk)]
		rows = rows[len(part):]
		args = args[:0]
		for _, r := range part {
			args = AppendAuditArgs(args, r)
		}
		if err := exec(len(part), args); err != nil {
			if len(part) == 1 {
				return fmt.Errorf("audit: inserting row %d: %w", part[0].Seq, err)
			}
			return fmt.Errorf("audit: inserting rows %d to %d: %w", part[0].Seq, part[len(part)-1].Seq, err)
		}
	}
	return nil
}

// RowQuerier reads one row.
type RowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func AuditHeadOn(ctx context.Context, q RowQuerier) (store.AuditHead, error) {
	var h store.AuditHead
	// The newest row; when an archive removed every row, the anchor.
	err := q.QueryRowContext(ctx, `SELECT seq, hash FROM (
		SELECT seq, hash FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS newest
		UNION ALL SELECT seq, hash FROM audit_anchor) AS heads ORDER BY seq DESC LIMIT 1`).Scan(&h.Seq, &h.Hash)
	if errors.Is(err, sql.ErrNoRows) {
		return store.AuditHead{Hash: bytes.Clone(store.GenesisHash)}, nil
	}
	if err != nil {
		return h, fmt.Errorf("audit: reading chain head: %w", err)
	}
	return h, nil
}

// AuditHead implements store.Reader.
func (r Reader) AuditHead(ctx context.Context) (store.AuditHead, error) { return AuditHeadOn(ctx, r.Q) }

// AuditRows implements store.Reader.
func (r Reader) AuditRows(ctx context.Context, f store.AuditFilter, fn func(store.AuditRow) error) error {
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
	rows, err := r.Q.QueryContext(ctx, q, args...)
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
func (r Reader) AuditAnchor(ctx context.Context) (store.AuditAnchor, error) {
	var a store.AuditAnchor
	err := r.Q.QueryRowContext(ctx, `SELECT seq, hash, time, checkpoint, archive_sha256, archived_at FROM audit_anchor`).
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
func (t *Tx) ArchiveAudit(ctx context.Context, a store.AuditAnchor) (int64, error) {
	var hash []byte
	err := t.Q.QueryRowContext(ctx, `SELECT hash FROM audit_events WHERE seq = ?`, a.Seq).Scan(&hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("audit: archiving up to row %d: %w", a.Seq, store.ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("audit: archiving up to row %d: %w", a.Seq, err)
	}
	if !bytes.Equal(hash, a.Hash) {
		return 0, fmt.Errorf("audit: archiving up to row %d: its hash differs: %w", a.Seq, store.ErrConflict)
	}
	if _, err := t.Q.ExecContext(ctx, `INSERT INTO audit_anchor (id, seq, hash, time, checkpoint, archive_sha256, archived_at)
		VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
		time = excluded.time, checkpoint = excluded.checkpoint, archive_sha256 = excluded.archive_sha256,
		archived_at = excluded.archived_at`,
		a.Seq, a.Hash, a.Time, a.Checkpoint, a.ArchiveSHA256, a.ArchivedAt); err != nil {
		return 0, fmt.Errorf("audit: setting the archive anchor: %w", err)
	}
	res, err := t.Q.ExecContext(ctx, `DELETE FROM audit_events WHERE seq <= ?`, a.Seq)
	if err != nil {
		return 0, fmt.Errorf("audit: removing archived rows: %w", err)
	}
	return res.RowsAffected()
}

// AppendAudit implements store.Tx.
func (t *Tx) AppendAudit(ctx context.Context, rows ...store.AuditRow) error {
	for _, r := range rows {
		if _, err := t.Q.ExecContext(ctx, InsertAuditSQL, AuditArgs(r)...); err != nil {
			return fmt.Errorf("audit: inserting row %d: %w", r.Seq, err)
		}
	}
	return nil
}
