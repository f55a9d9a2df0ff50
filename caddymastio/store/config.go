package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// GetConfig returns the value stored under key and whether it exists.
func (s *Store) GetConfig(ctx context.Context, key string) (string, bool, error) {
	var v string
	err := s.db.QueryRowContext(ctx, `SELECT value FROM config WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("reading config %q: %w", key, err)
	}
	return v, true, nil
}

// SetConfig stores value under key, replacing any previous value.
func (s *Store) SetConfig(ctx context.Context, key, value string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		key, value, FormatTime(time.Now()))
	if err != nil {
		return fmt.Errorf("writing config %q: %w", key, err)
	}
	return nil
}

// InitConfig stores value under key unless the key already has a value,
// and returns the value now stored. It is how first-start facts (the org
// id, the root fingerprint) are fixed once and then checked forever.
func (s *Store) InitConfig(ctx context.Context, key, value string) (string, error) {
	if _, err := s.db.ExecContext(ctx, `INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO NOTHING`, key, value, FormatTime(time.Now())); err != nil {
		return "", fmt.Errorf("writing config %q: %w", key, err)
	}
	v, _, err := s.GetConfig(ctx, key)
	return v, err
}
