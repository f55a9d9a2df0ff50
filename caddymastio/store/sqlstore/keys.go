package sqlstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// SigningKeys implements store.Reader.
func (r Reader) SigningKeys(ctx context.Context, statuses ...string) ([]*store.SigningKey, error) {
	var where []string
	var args []any
	if len(statuses) > 0 {
		where = append(where, "status IN (?"+strings.Repeat(", ?", len(statuses)-1)+")")
		for _, s := range statuses {
			args = append(args, s)
		}
	}
	rows, err := r.Q.QueryContext(ctx, `SELECT kid, alg, public_jwk, key_ref, status, created_at, COALESCE(activated_at, ''),
		COALESCE(deprecated_at, ''), COALESCE(expires_at, '') FROM signing_keys`+whereClause(where)+` ORDER BY created_at, kid`, args...)
	if err != nil {
		return nil, fmt.Errorf("reading signing keys: %w", err)
	}
	defer rows.Close()
	out := []*store.SigningKey{}
	for rows.Next() {
		k := &store.SigningKey{}
		var created, activated, deprecated, expires string
		if err := rows.Scan(&k.Kid, &k.Alg, &k.PublicJWK, &k.KeyRef, &k.Status, &created, &activated, &deprecated, &expires); err != nil {
			return nil, fmt.Errorf("reading signing keys: %w", err)
		}
		k.CreatedAt = parseTime(created)
		k.ActivatedAt, k.DeprecatedAt, k.ExpiresAt = parseOptTime(activated), parseOptTime(deprecated), parseOptTime(expires)
		out = append(out, k)
	}
	return out, rows.Err()
}

// InsertSigningKey implements store.Tx.
func (t *Tx) InsertSigningKey(ctx context.Context, k *store.SigningKey) error {
	_, err := t.Q.ExecContext(ctx, `INSERT INTO signing_keys
		(kid, alg, public_jwk, key_ref, status, created_at, activated_at, deprecated_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, NULLIF(?, ''), NULLIF(?, ''), NULLIF(?, ''))`,
		k.Kid, k.Alg, k.PublicJWK, k.KeyRef, k.Status, formatTime(k.CreatedAt), formatOptTime(k.ActivatedAt),
		formatOptTime(k.DeprecatedAt), formatOptTime(k.ExpiresAt))
	if err != nil {
		return fmt.Errorf("recording signing key %s: %w", k.Kid, t.conflict(err))
	}
	return nil
}

// UpdateSigningKey implements store.Tx.
func (t *Tx) UpdateSigningKey(ctx context.Context, k *store.SigningKey) error {
	res, err := t.Q.ExecContext(ctx, `UPDATE signing_keys SET status = ?, activated_at = NULLIF(?, ''), deprecated_at = NULLIF(?, ''),
		expires_at = NULLIF(?, '') WHERE kid = ?`,
		k.Status, formatOptTime(k.ActivatedAt), formatOptTime(k.DeprecatedAt), formatOptTime(k.ExpiresAt), k.Kid)
	if err != nil {
		return fmt.Errorf("updating signing key %s: %w", k.Kid, t.conflict(err))
	}
	return affected(res, "signing key "+k.Kid)
}
