package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Config implements store.Reader.
func (r Reader) Config(ctx context.Context, key string) (string, bool, error) {
	var v string
	err := r.Q.QueryRowContext(ctx, `SELECT value FROM config WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading config %q: %w", key, err)
	}
	return v, true, nil
}

// SetConfig implements store.Tx.
func (t *Tx) SetConfig(ctx context.Context, key, value string) error {
	_, err := t.Q.ExecContext(ctx, `INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		key, value, formatTime(time.Now()))
	if err != nil {
		return fmt.Errorf("writing config %q: %w", key, err)
	}
	return nil
}

// InitConfig implements store.Tx.
func (t *Tx) InitConfig(ctx context.Context, key, value string) (string, error) {
	if _, err := t.Q.ExecContext(ctx, `INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO NOTHING`, key, value, formatTime(time.Now())); err != nil {
		return "", fmt.Errorf("writing config %q: %w", key, err)
	}
	v, _, err := t.Config(ctx, key)
	return v, err
}
