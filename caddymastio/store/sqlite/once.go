package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// UseOnce implements store.Tx.
func (t *tx) UseOnce(ctx context.Context, key string, expires time.Time) (bool, error) {
	if _, err := t.tx.ExecContext(ctx, `DELETE FROM used_credentials WHERE key = ? AND expires_at <= ?`,
		key, formatTime(time.Now())); err != nil {
		return false, err
	}
	_, err := t.tx.ExecContext(ctx, `INSERT INTO used_credentials (key, expires_at) VALUES (?, ?)`, key, formatTime(expires))
	if errors.Is(conflict(err), store.ErrConflict) {
		return false, nil
	}
	return err == nil, err
}

// ForgetUsed implements store.Tx.
func (t *tx) ForgetUsed(ctx context.Context, now time.Time) (int64, error) {
	res, err := t.tx.ExecContext(ctx, `DELETE FROM used_credentials WHERE expires_at <= ?`, formatTime(now))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// conflict turns a uniqueness violation into store.ErrConflict (wrapping
// the driver's error); other errors are returned as they are.
func conflict(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return fmt.Errorf("%w: %w", store.ErrConflict, err)
		}
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
