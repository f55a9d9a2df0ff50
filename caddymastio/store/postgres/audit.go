package postgres

import (
	"context"
	"fmt"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlstore"
)

// auditWriter commits batches of audit rows: one transaction each, under
// the write lock, so the instances sharing the database append to one
// chain in turn.
type auditWriter struct{ db *DB }

// insertChunk is the most rows one INSERT carries: 64 rows are 576
// parameters, far below Postgres' 65,535, and one round trip instead of 64.
const insertChunk = 64

// Append implements store.AuditWriter. With SyncFull the commit waits for
// the WAL flush (synchronous_commit on, the server's default); with SyncOS
// it does not (synchronous_commit off: a crash of the database server may
// lose the last commits, never the chain's consistency).
func (w *auditWriter) Append(ctx context.Context, d store.Durability, head *store.AuditHead,
	build func(store.AuditHead) ([]store.AuditRow, error)) error {
	t, err := w.db.begin(ctx)
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	defer t.Rollback()
	if d == store.SyncOS {
		if _, err := t.ExecContext(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return fmt.Errorf("audit: synchronous_commit: %w", unavailable(err))
		}
	}
	q := sqlstore.Dollars{Q: t}
	// The write lock is held from here: the head read now is the chain's.
	// It is always read, never taken from the caller: other instances
	// append too, so a cached head is often stale, and a failed insert
	// costs more than the indexed read.
	h, err := sqlstore.AuditHeadOn(ctx, q)
	if err != nil {
		return err
	}
	rows, err := build(h)
	if err != nil {
		return err
	}
	if err := sqlstore.InsertAuditRows(rows, insertChunk, func(n int, args []any) error {
		_, err := q.ExecContext(ctx, sqlstore.InsertAuditRowsSQL(n), args...)
		return unavailable(err)
	}); err != nil {
		return err
	}
	if err := t.Commit(); err != nil {
		return fmt.Errorf("audit: commit: %w", unavailable(err))
	}
	return nil
}

// Close implements store.AuditWriter.
func (w *auditWriter) Close() error { return nil }
