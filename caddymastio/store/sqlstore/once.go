package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// UseOnce implements store.Tx.
func (t *Tx) UseOnce(ctx context.Context, key string, expires time.Time) (bool, error) {
	if _, err := t.Q.ExecContext(ctx, `DELETE FROM used_credentials WHERE key = ? AND expires_at <= ?`,
		key, formatTime(time.Now())); err != nil {
		return false, err
	}
	// ON CONFLICT rather than a failed INSERT: in Postgres a failed
	// statement aborts the whole transaction.
	res, err := t.Q.ExecContext(ctx, `INSERT INTO used_credentials (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`,
		key, formatTime(expires))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// ForgetUsed implements store.Tx.
func (t *Tx) ForgetUsed(ctx context.Context, now time.Time) (int64, error) {
	res, err := t.Q.ExecContext(ctx, `DELETE FROM used_credentials WHERE expires_at <= ?`, formatTime(now))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// conflict turns a uniqueness violation into store.ErrConflict (wrapping
// the driver's error); other errors are returned as they are.
func (r Reader) conflict(err error) error {
	if err != nil && r.D.IsUnique(err) {
		return fmt.Errorf("%w: %w", store.ErrConflict, err)
	}
	return err
}

// affected is store.ErrNotFound, naming what, when a write changed no
// row.
func affected(res sql.Result, what string) error {
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return fmt.Errorf("%w: %s", store.ErrNotFound, what)
	}
	return nil
}
