package store

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// UseOnce records key as used until expires, in tx, and reports false if
// it was recorded already (and has not expired). Recording it in the
// transaction that acts on it (with its audit row) makes the single use
// survive restarts and crashes: what was acknowledged was committed.
func UseOnce(ctx context.Context, tx *sql.Tx, key string, expires time.Time) (bool, error) {
	now := FormatTime(time.Now())
	if _, err := tx.ExecContext(ctx, `DELETE FROM used_credentials WHERE key = ? AND expires_at <= ?`, key, now); err != nil {
		return false, err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO used_credentials (key, expires_at) VALUES (?, ?)`, key, FormatTime(expires))
	var se *sqlite.Error
	if errors.As(err, &se) && (se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY || se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE) {
		return false, nil
	}
	return err == nil, err
}

// PurgeUsed forgets used credentials that have expired.
func (s *Store) PurgeUsed(ctx context.Context) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM used_credentials WHERE expires_at <= ?`, FormatTime(time.Now()))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
