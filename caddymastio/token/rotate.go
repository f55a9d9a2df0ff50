package token

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// DefaultGrace is how long a deprecated key keeps verifying tokens after a
// rotation: far longer than any token lives, so none is cut short.
const DefaultGrace = 24 * time.Hour

// Rotation is the outcome of Rotate.
type Rotation struct {
	NewKid    string    `json:"new_kid"`
	OldKid    string    `json:"old_kid"`
	GraceEnds time.Time `json:"old_key_verifies_until"`
}

// Rotate makes a new signing key and, in one transaction with its audit
// row, records it staged, deprecates the active key (verifying until
// grace ends) and activates the new one. Tokens signed by the old key keep
// verifying; new tokens use the new key at once. No restart is needed and
// agents keep their enrollment.
func (r *KeyRing) Rotate(ctx context.Context, log *audit.Log, grace time.Duration, beforeCommit func() error, actor string, details map[string]any) (*Rotation, error) {
	if grace <= 0 {
		grace = DefaultGrace
	}
	k, pub, err := r.generate()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rot := &Rotation{NewKid: k.Kid, GraceEnds: now.Add(grace).UTC()}
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	ts := store.FormatTime(now)
	if _, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (kid, alg, public_jwk, key_ref, status, created_at)
		VALUES (?, 'ES256', ?, ?, 'staged', ?)`, k.Kid, pub, k.keyRef, ts); err != nil {
		return nil, fmt.Errorf("staging the new key: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `SELECT kid FROM signing_keys WHERE status = 'active'`).Scan(&rot.OldKid); err != nil && err != sql.ErrNoRows {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE signing_keys SET status = 'deprecated', deprecated_at = ?, expires_at = ?
		WHERE status = 'active'`, ts, store.FormatTime(rot.GraceEnds)); err != nil {
		return nil, fmt.Errorf("deprecating the active key: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE signing_keys SET status = 'active', activated_at = ? WHERE kid = ?`, ts, k.Kid); err != nil {
		return nil, fmt.Errorf("activating the new key: %w", err)
	}
	d := map[string]any{"new_kid": k.Kid, "old_kid": rot.OldKid, "old_key_verifies_until": rot.GraceEnds.Format(time.RFC3339)}
	for key, v := range details {
		d[key] = v
	}
	if _, err := log.AppendTx(ctx, tx, audit.Event{Type: "token.signing_key_rotated", Actor: actor, Subject: k.Kid, Details: d}); err != nil {
		return nil, err
	}
	if beforeCommit != nil {
		if err := beforeCommit(); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	return rot, r.load(ctx)
}

// Keys lists the keys that verify tokens now, the active one first.
func (r *KeyRing) Keys() []*SigningKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*SigningKey, 0, len(r.all))
	for _, k := range r.all {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		if (out[i].Status == "active") != (out[j].Status == "active") {
			return out[i].Status == "active"
		}
		return out[i].Kid < out[j].Kid
	})
	return out
}
