package token

import (
	"context"
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
func (r *KeyRing) Rotate(ctx context.Context, grace time.Duration, actor string, details map[string]any) (*Rotation, error) {
	if grace <= 0 {
		grace = DefaultGrace
	}
	k, pub, err := r.generate()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rot := &Rotation{NewKid: k.Kid, GraceEnds: now.Add(grace).UTC()}
	_, err = r.log.Change(ctx, func(c *audit.Change) error {
		fresh := &store.SigningKey{Kid: k.Kid, Alg: k.Alg, PublicJWK: pub, KeyRef: k.keyRef, Status: store.KeyStaged, CreatedAt: now}
		if err := c.InsertSigningKey(ctx, fresh); err != nil {
			return fmt.Errorf("staging the new key: %w", err)
		}
		active, err := c.SigningKeys(ctx, store.KeyActive)
		if err != nil {
			return err
		}
		for _, old := range active {
			rot.OldKid = old.Kid
			old.Status, old.DeprecatedAt, old.ExpiresAt = store.KeyDeprecated, &now, &rot.GraceEnds
			if err := c.UpdateSigningKey(ctx, old); err != nil {
				return fmt.Errorf("deprecating the active key: %w", err)
			}
		}
		fresh.Status, fresh.ActivatedAt = store.KeyActive, &now
		if err := c.UpdateSigningKey(ctx, fresh); err != nil {
			return fmt.Errorf("activating the new key: %w", err)
		}
		d := map[string]any{"new_kid": k.Kid, "old_kid": rot.OldKid, "old_key_verifies_until": rot.GraceEnds.Format(time.RFC3339)}
		for key, v := range details {
			d[key] = v
		}
		c.Record(audit.Event{Type: "token.signing_key_rotated", Actor: actor, Subject: k.Kid, Details: d})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rot, r.load(ctx)
}

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
