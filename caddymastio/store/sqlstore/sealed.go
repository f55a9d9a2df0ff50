package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// SealedFile implements store.Reader.
func (r Reader) SealedFile(ctx context.Context, name string) ([]byte, error) {
	var b []byte
	err := r.Q.QueryRowContext(ctx, `SELECT sealed FROM sealed_files WHERE name = ?`, name).Scan(&b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("sealed file %s: %w", name, store.ErrNotFound)
	}
	return b, err
}

// SealedFiles implements store.Reader.
func (r Reader) SealedFiles(ctx context.Context, prefix string) (map[string][]byte, error) {
	rows, err := r.Q.QueryContext(ctx, `SELECT name, sealed FROM sealed_files ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string][]byte{}
	for rows.Next() {
		var name string
		var b []byte
		if err := rows.Scan(&name, &b); err != nil {
			return nil, err
		}
		if strings.HasPrefix(name, prefix) {
			out[name] = b
		}
	}
	return out, rows.Err()
}

// PutSealedFile implements store.Tx.
func (t *Tx) PutSealedFile(ctx context.Context, name string, sealed []byte) error {
	_, err := t.Q.ExecContext(ctx, `INSERT INTO sealed_files (name, sealed, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at`,
		name, sealed, formatTime(time.Now()))
	return err
}

// DeleteSealedFile implements store.Tx.
func (t *Tx) DeleteSealedFile(ctx context.Context, name string) (bool, error) {
	res, err := t.Q.ExecContext(ctx, `DELETE FROM sealed_files WHERE name = ?`, name)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}
