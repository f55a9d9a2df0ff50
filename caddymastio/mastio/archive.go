package mastio

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Archived is what an archive removed and the anchor it left.
type Archived struct {
	// FirstSeq and ThroughSeq are the seq range of the rows removed.
	FirstSeq   int64 `json:"first_seq"`
	ThroughSeq int64 `json:"through_seq"`
	Removed    int64 `json:"removed"`
	// AnchorHash is the hash of row ThroughSeq (hex): the row after it
	// links to it.
	AnchorHash string `json:"anchor_hash"`
	// Checkpoint is the Mastio's signed checkpoint of row ThroughSeq, kept
	// with the anchor.
	Checkpoint string `json:"checkpoint"`
	// Seq is the audit.archived row that records the archive.
	Seq int64 `json:"seq"`
}

// ArchiveAudit removes the rows up to seq through from the chain for a
// caller that holds them in an archive it has verified: throughHash (hex)
// must be row through's hash as stored — the archive's last hash — and
// archiveSHA256 the archive file's digest, kept with the anchor and in
// the audit.archived row. In one transaction the anchor (that row's seq,
// hash and time, and a signed checkpoint of it) is set, the rows are
// removed and the archive is recorded; the rows that stay verify from the
// anchor (audit.Verify).
func (m *Mastio) ArchiveAudit(ctx context.Context, through int64, throughHash, archiveSHA256 string, details map[string]any) (*Archived, error) {
	hash, err := hex.DecodeString(throughHash)
	if err != nil || len(hash) != 32 {
		return nil, &registry.Error{Status: 400, Code: "invalid_request", Field: "through_hash", Message: "through_hash must be a SHA-256 in hex"}
	}
	if sum, err := hex.DecodeString(archiveSHA256); err != nil || len(sum) != 32 {
		return nil, &registry.Error{Status: 400, Code: "invalid_request", Field: "archive_sha256", Message: "archive_sha256 must be the archive file's SHA-256 in hex"}
	}
	if through < 1 {
		return nil, &registry.Error{Status: 400, Code: "invalid_request", Field: "through_seq", Message: "through_seq must be a seq of the chain"}
	}
	prior, err := m.store.AuditAnchor(ctx)
	if err != nil {
		return nil, err
	}
	var row *store.AuditRow
	if err := m.store.AuditRows(ctx, store.AuditSeqs(through, through), func(r store.AuditRow) error { row = &r; return nil }); err != nil {
		return nil, err
	}
	switch {
	case row == nil && through <= prior.Seq:
		return nil, &registry.Error{Status: 409, Code: "already_archived",
			Message: fmt.Sprintf("the rows up to seq %d are archived already (at %s)", prior.Seq, prior.ArchivedAt)}
	case row == nil:
		return nil, &registry.Error{Status: 404, Code: "no_such_row", Message: fmt.Sprintf("the chain has no row %d", through)}
	case !bytes.Equal(row.Hash, hash):
		return nil, &registry.Error{Status: 409, Code: "hash_mismatch", Message: fmt.Sprintf(
			"row %d has hash %x, not %s: the archive is not of this chain", through, row.Hash, throughHash)}
	}
	c := audit.Checkpoint{Org: m.orgID, Seq: row.Seq, Hash: throughHash, Time: time.Now().UTC().Format(time.RFC3339Nano)}
	jws, _, err := m.signCheckpoint(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("signing the archive anchor: %w", err)
	}
	anchor := store.AuditAnchor{Seq: row.Seq, Hash: row.Hash, Time: row.Time, Checkpoint: jws, ArchiveSHA256: archiveSHA256,
		ArchivedAt: time.Now().UTC().Format(audit.TimeFormat)}
	out := &Archived{FirstSeq: prior.Seq + 1, ThroughSeq: through, AnchorHash: throughHash, Checkpoint: jws}
	recs, err := m.audit.Change(ctx, func(tx *audit.Change) error {
		if out.Removed, err = tx.ArchiveAudit(ctx, anchor); err != nil {
			return err
		}
		tx.Record(audit.Event{Type: "audit.archived", Actor: ActorOf(ctx), Subject: "audit", Details: mergeMaps(map[string]any{
			"first_seq": out.FirstSeq, "through_seq": through, "through_hash": throughHash, "removed": out.Removed,
			"archive_sha256": archiveSHA256}, details)})
		return nil
	})
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		return nil, &registry.Error{Status: 409, Code: "archive_conflict", Message: "another archive changed the chain meanwhile: " + err.Error()}
	}
	if err != nil {
		return nil, err
	}
	out.Seq = recs[0].Seq
	m.log.Info("audit rows archived", zap.Int64("first_seq", out.FirstSeq), zap.Int64("through_seq", through),
		zap.Int64("removed", out.Removed), zap.String("archive_sha256", archiveSHA256))
	return out, nil
}
