package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"sync"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlstore"
)

// auditWriter is the group-commit writer's path: one connection kept for
// it with its INSERT and transaction statements prepared, instead of a
// pooled connection and a fresh prepare for every batch.
type auditWriter struct {
	db *DB

	mu                 sync.Mutex // one batch at a time
	conn               *sql.Conn
	inserts            [insertChunk + 1]*sql.Stmt // inserts[n] inserts n rows, prepared when first needed
	begin, end, rewind *sql.Stmt                  // BEGIN IMMEDIATE, COMMIT, ROLLBACK
	connSync           store.Durability
}

// insertChunk is the most rows one INSERT statement carries (see
// sqlstore.InsertAuditRows): a statement per size up to it is prepared on
// the writer's connection.
const insertChunk = 16

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
	}{{&w.begin, "BEGIN IMMEDIATE"}, {&w.end, "COMMIT"}, {&w.rewind, "ROLLBACK"}} {
		if *p.stmt, err = conn.PrepareContext(ctx, p.sql); err != nil {
			w.drop()
			return fmt.Errorf("audit: preparing %q: %w", p.sql, err)
		}
	}
	return nil
}

// drop closes the connection; the next batch opens another.
func (w *auditWriter) drop() {
	for _, st := range append(w.inserts[:], w.begin, w.end, w.rewind) {
		if st != nil {
			st.Close()
		}
	}
	if w.conn != nil {
		w.conn.Close()
	}
	w.conn, w.inserts, w.begin, w.end, w.rewind = nil, [insertChunk + 1]*sql.Stmt{}, nil, nil, nil
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
	} else if h, err = sqlstore.AuditHeadOn(ctx, w.conn); err != nil {
		return err
	}
	rows, err := build(h)
	if err != nil {
		return err
	}
	if err := sqlstore.InsertAuditRows(rows, insertChunk, func(n int, args []any) error { return w.insert(ctx, n, args) }); err != nil {
		return err
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

// insert runs the statement inserting n rows, prepared on first use.
func (w *auditWriter) insert(ctx context.Context, n int, args []any) error {
	if w.inserts[n] == nil {
		st, err := w.conn.PrepareContext(ctx, sqlstore.InsertAuditRowsSQL(n))
		if err != nil {
			return fmt.Errorf("preparing: %w", err)
		}
		w.inserts[n] = st
	}
	_, err := w.inserts[n].ExecContext(ctx, args...)
	return err
}
