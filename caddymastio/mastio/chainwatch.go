package mastio

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// DefaultVerifyInterval is how often the background verifier walks the
// rows appended since its last walk.
const DefaultVerifyInterval = time.Minute

// scrubRows is how many rows verified before each walk re-walks too,
// continuing where the last walk left off: the whole chain is walked again
// every (rows / scrubRows) intervals (a million rows: 100 walks), at a
// bounded cost each (10,000 rows: about 0.1 s of a core).
const scrubRows = 10_000

// ChainBreak is a break the background verifier found in the audit chain.
type ChainBreak struct {
	Seq    int64     `json:"seq"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// chainWatch is the background verifier's state: the last row it
// verified (its hash kept in memory, so that the next walk links to what
// was verified, not to what the file holds now).
type chainWatch struct {
	mu       sync.Mutex // one walk at a time
	verified store.AuditHead
	anchor   int64 // the archive anchor's seq at the last walk
	scrub    int64 // the next row to re-walk (0: the first after the anchor)
	scrubN   int64 // rows re-walked per walk (0: scrubRows)
	// broken is read without the lock, so that readiness never waits
	// for a walk.
	broken atomic.Pointer[ChainBreak]
}

// ChainBreak returns the break the background verifier reports, if any.
func (m *Mastio) ChainBreak() *ChainBreak { return m.chain.broken.Load() }

// VerifyNewAuditRows is one walk of the background verifier. It checks
// that the row it verified last still has the hash it had, walks the rows
// appended since, linked to that hash, and re-walks the next scrubRows of
// the rows verified before (so a change to an old row is found within a
// bounded number of walks). At first, when the archive anchor moved, and
// while a break is reported, it walks the whole chain from its anchor
// instead (the anchor's signature checked). A break is confirmed by a
// whole walk (an archive may have removed rows under the first), then
// logged, counted and reported by Readiness until a whole walk passes.
func (m *Mastio) VerifyNewAuditRows(ctx context.Context) error {
	c := &m.chain
	c.mu.Lock()
	defer c.mu.Unlock()
	anchor, err := m.store.AuditAnchor(ctx)
	if err != nil {
		return err
	}
	broken := c.broken.Load()
	full := c.verified.Seq == 0 || anchor.Seq != c.anchor || broken != nil
	var res audit.VerifyResult
	if !full {
		if res, err = m.walkNewAndScrub(ctx, anchor.Seq); err == nil && !res.OK() {
			full = true
		}
	}
	if full && err == nil {
		res, err = m.VerifyAudit(ctx, 1, 0)
	}
	if err != nil {
		return err
	}
	auditVerifiedRows.Add(float64(res.Checked))
	if !res.OK() {
		if now, err := m.store.AuditAnchor(ctx); err != nil || now.Seq != anchor.Seq {
			return err // an archive removed rows under the walk: the next walk starts from its anchor
		}
		if broken == nil || broken.Seq != res.FirstBad {
			c.broken.Store(&ChainBreak{Seq: res.FirstBad, Reason: res.Reason, Since: time.Now().UTC()})
			auditChainBreaks.Inc()
			m.log.Error("audit chain broken", zap.Int64("seq", res.FirstBad), zap.String("reason", res.Reason),
				zap.Int64("rows_verified", res.Checked))
		}
		auditChainBroken.Set(1)
		return nil
	}
	if broken != nil {
		m.log.Info("audit chain verifies again", zap.Int64("seq", broken.Seq), zap.Int64("head_seq", res.To))
		c.broken.Store(nil)
	}
	auditChainBroken.Set(0)
	if full {
		c.anchor, c.scrub = anchor.Seq, 0
	}
	if res.Checked > 0 || full {
		c.verified = store.AuditHead{Seq: res.To, Hash: res.HeadHash}
		if res.Checked == 0 { // a whole walk of an empty chain, or of one that is all archived
			c.verified = store.AuditHead{Seq: anchor.Seq, Hash: anchor.Hash}
		}
	}
	auditVerifiedSeq.Set(float64(c.verified.Seq))
	return nil
}

// walkNewAndScrub is the walk of a verifier that has verified rows
// before: the last of them unchanged, the new rows, the next old ones.
func (m *Mastio) walkNewAndScrub(ctx context.Context, anchorSeq int64) (audit.VerifyResult, error) {
	c := &m.chain
	var stored []byte
	if err := m.store.AuditRows(ctx, store.AuditSeqs(c.verified.Seq, c.verified.Seq), func(r store.AuditRow) error {
		stored = r.Hash
		return nil
	}); err != nil {
		return audit.VerifyResult{}, err
	}
	if !bytes.Equal(stored, c.verified.Hash) {
		return audit.VerifyResult{FirstBad: c.verified.Seq, Reason: "the row verified last is missing or its hash changed"}, nil
	}
	res, err := audit.VerifyAfter(ctx, m.store, c.verified, 0)
	if err != nil || !res.OK() {
		return res, err
	}
	n := c.scrubN
	if n == 0 {
		n = scrubRows
	}
	from := max(c.scrub, anchorSeq+1)
	to := min(from+n-1, c.verified.Seq)
	old, err := audit.Verify(ctx, m.store, from, to)
	if err != nil || !old.OK() {
		return old, err
	}
	res.Checked += old.Checked
	if c.scrub = to + 1; c.scrub > c.verified.Seq {
		c.scrub = 0 // round again from the anchor
	}
	return res, nil
}

// chainReadiness is the readiness check of the audit chain.
func (m *Mastio) chainReadiness() (reason string, err error) {
	if b := m.ChainBreak(); b != nil {
		return fmt.Sprintf("broken_at_seq_%d", b.Seq),
			fmt.Errorf("audit chain broken at seq %d since %s: %s", b.Seq, b.Since.Format(time.RFC3339), b.Reason)
	}
	return "", nil
}

// watchChain runs the background verifier until stop.
func (s *Shared) watchChain() {
	defer func() {
		if err := recover(); err != nil {
			s.log().Error("audit verifier panicked", zap.Any("error", err))
		}
	}()
	for {
		interval := 100 * time.Millisecond // until a configuration starts
		if m := s.inForce.Load(); m != nil {
			interval = DefaultVerifyInterval
			if m.cfg.AuditVerifyInterval > 0 {
				interval = m.cfg.AuditVerifyInterval
			}
			if err := m.VerifyNewAuditRows(context.Background()); err != nil {
				s.log().Warn("audit verifier could not read the chain", zap.Error(err))
			}
		}
		select {
		case <-s.stop:
			return
		case <-time.After(interval):
		}
	}
}
