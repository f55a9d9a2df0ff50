package mastio

import (
	"context"
	"encoding/hex"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// DefaultCheckpointInterval is how often the chain is checkpointed when
// it grew.
const DefaultCheckpointInterval = time.Hour

// AuditCheckpoint signs the chain's head as it is now (see
// audit.Checkpoint) with the Mastio's audit signing certificate.
func (m *Mastio) AuditCheckpoint(ctx context.Context) (audit.Checkpoint, string, error) {
	seq, hash, err := m.audit.Head(ctx)
	if err != nil {
		return audit.Checkpoint{}, "", err
	}
	c := audit.Checkpoint{Org: m.orgID, Seq: seq, Hash: hex.EncodeToString(hash), Time: time.Now().UTC().Format(time.RFC3339Nano)}
	jws, _, err := m.signCheckpoint(ctx, c)
	return c, jws, err
}

// WriteCheckpoint adds a signed checkpoint of the head to the chain
// itself (audit.checkpoint, its details holding the JWS), unless the head
// is already one: a copy of the chain then carries the Mastio's signature
// over every row before it.
func (m *Mastio) WriteCheckpoint(ctx context.Context, reason string) error {
	c, jws, err := m.AuditCheckpoint(ctx)
	if err != nil {
		return err
	}
	if c.Seq > 0 && c.Seq == m.lastCheckpoint.Load() {
		return nil // nothing was appended since
	}
	rec, err := m.audit.Append(ctx, audit.Event{Type: "audit.checkpoint", Actor: "system", Subject: m.orgID,
		Details: map[string]any{"seq": c.Seq, "hash": c.Hash, "time": c.Time, "reason": reason, "jws": jws}})
	if err != nil {
		return err
	}
	m.lastCheckpoint.Store(rec.Seq)
	m.log.Debug("audit checkpoint written", zap.Int64("seq", c.Seq), zap.String("reason", reason))
	return nil
}

func (m *Mastio) checkpointInterval() time.Duration {
	if m.cfg.AuditCheckpointInterval > 0 {
		return m.cfg.AuditCheckpointInterval
	}
	return DefaultCheckpointInterval
}
