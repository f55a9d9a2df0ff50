package audit

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// VerifyResult is the outcome of Verify.
type VerifyResult struct {
	// From and To are the seq range that was walked.
	From, To int64
	// Checked is how many rows verified before the walk stopped.
	Checked int64
	// FirstBad is the first seq that does not verify; 0 if all did.
	FirstBad int64
	// Reason says why FirstBad failed.
	Reason string
	// HeadHash is the hash of the last row checked.
	HeadHash []byte
	// Anchor is the archive anchor the walk started from (Seq 0: the walk
	// started from a row, or from the genesis hash). Verify checks the
	// rows link to it; VerifyAnchor checks its signature.
	Anchor store.AuditAnchor
	// Unknown are the forwarded MCP calls in the range whose outcome row
	// is not (in the range): still at their upstream, or lost in a crash.
	// They do not make the chain bad.
	Unknown OutcomeUnknown
}

// OK reports whether every row in the range verified.
func (v VerifyResult) OK() bool { return v.FirstBad == 0 }

// errStop ends a walk of the rows early.
var errStop = errors.New("stop")

// Verify walks the chain from seq from to seq to (inclusive; to <= 0 means
// the newest row) and reports the first row whose link or hash is wrong.
// For from > 1 the stored hash of row from-1 is taken as the anchor. Rows
// removed by an archive are skipped: the walk then starts from the archive
// anchor's hash (see VerifyResult.Anchor).
func Verify(ctx context.Context, st store.Reader, from, to int64) (VerifyResult, error) {
	anchor, err := st.AuditAnchor(ctx)
	if err != nil {
		return VerifyResult{}, err
	}
	from = max(from, anchor.Seq+1, 1)
	if to <= 0 {
		h, err := st.AuditHead(ctx)
		if err != nil {
			return VerifyResult{}, err
		}
		to = h.Seq
	}
	res := VerifyResult{From: from, To: to}
	prev := GenesisHash
	if anchor.Seq > 0 && from == anchor.Seq+1 {
		res.Anchor, prev = anchor, anchor.Hash
	} else if from > 1 {
		var anchor []byte
		err := st.AuditRows(ctx, store.AuditSeqs(from-1, from-1), func(r store.AuditRow) error { anchor = r.Hash; return nil })
		if err != nil {
			return res, fmt.Errorf("audit: reading anchor row %d: %w", from-1, err)
		}
		if anchor == nil {
			res.FirstBad, res.Reason = from-1, "row is missing"
			return res, nil
		}
		prev = anchor
	}
	return walk(ctx, st, res, prev)
}

// VerifyAfter walks the rows after known (a row verified before, whose
// hash the caller kept) up to seq to (<= 0: the newest), as Verify does:
// the walk links to the kept hash, not to what the store holds now.
func VerifyAfter(ctx context.Context, st store.Reader, known store.AuditHead, to int64) (VerifyResult, error) {
	if to <= 0 {
		h, err := st.AuditHead(ctx)
		if err != nil {
			return VerifyResult{}, err
		}
		to = h.Seq
	}
	return walk(ctx, st, VerifyResult{From: known.Seq + 1, To: to, HeadHash: known.Hash}, known.Hash)
}

// walk checks the rows res.From to res.To, the first linking to prev.
func walk(ctx context.Context, st store.Reader, res VerifyResult, prev []byte) (VerifyResult, error) {
	from, to := res.From, res.To
	want := from
	var calls outcomes
	err := st.AuditRows(ctx, store.AuditSeqs(from, to), func(row store.AuditRow) error {
		if row.Seq != want {
			res.FirstBad, res.Reason = want, fmt.Sprintf("row is missing (next row is %d)", row.Seq)
			return errStop
		}
		want++
		if !bytes.Equal(row.PrevHash, prev) {
			res.FirstBad, res.Reason = row.Seq, fmt.Sprintf("prev_hash %s does not match the hash of row %d (%s)",
				short(row.PrevHash), row.Seq-1, short(prev))
			return errStop
		}
		t, err := time.Parse(TimeFormat, row.Time)
		if err != nil || t.UTC().Format(TimeFormat) != row.Time {
			res.FirstBad, res.Reason = row.Seq, fmt.Sprintf("time %q is not in the canonical format", row.Time)
			return errStop
		}
		r := Record{Seq: row.Seq, Time: t, Type: row.Type, Actor: row.Actor, Subject: row.Subject, Result: row.Result,
			Details: row.Details, PrevHash: row.PrevHash, Hash: row.Hash}
		got, err := r.ComputeHash()
		if err != nil {
			res.FirstBad, res.Reason = r.Seq, fmt.Sprintf("row content is not valid: %v", err)
			return errStop
		}
		if !bytes.Equal(got, r.Hash) {
			res.FirstBad, res.Reason = r.Seq, fmt.Sprintf("stored hash %s does not match the row content (%s)",
				short(r.Hash), short(got))
			return errStop
		}
		calls.see(r.Type, r.Seq, r.Details)
		prev = r.Hash
		res.Checked++
		res.HeadHash = r.Hash
		return nil
	})
	res.Unknown = calls.result()
	if errors.Is(err, errStop) {
		return res, nil
	}
	if err != nil {
		return res, err
	}
	if want <= to {
		res.FirstBad, res.Reason = want, "row is missing"
	}
	return res, nil
}

func short(h []byte) string {
	s := hex.EncodeToString(h)
	if len(s) > 16 {
		return s[:16] + "…"
	}
	return s
}

// Read calls fn with the records from seq from to seq to (inclusive; to
// <= 0: the newest), in order, until fn returns an error.
func Read(ctx context.Context, st store.Reader, from, to int64, fn func(Record) error) error {
	return st.AuditRows(ctx, store.AuditSeqs(from, to), func(row store.AuditRow) error {
		t, err := time.Parse(TimeFormat, row.Time)
		if err != nil {
			return fmt.Errorf("audit: row %d: time %q: %w", row.Seq, row.Time, err)
		}
		return fn(Record{Seq: row.Seq, Time: t, Type: row.Type, Actor: row.Actor, Subject: row.Subject, Result: row.Result,
			Details: row.Details, PrevHash: row.PrevHash, Hash: row.Hash})
	})
}

// VerifyAnchor checks an archive anchor's signed checkpoint (see
// VerifyCheckpoint): signed by the audit signer of the Mastio whose Org
// root is in roots, and naming the anchor's seq and hash.
func VerifyAnchor(a store.AuditAnchor, roots *x509.CertPool) error {
	c, _, err := VerifyCheckpoint(a.Checkpoint, roots)
	if err != nil {
		return fmt.Errorf("archive anchor at seq %d: %w", a.Seq, err)
	}
	if c.Seq != a.Seq || c.Hash != hex.EncodeToString(a.Hash) {
		return fmt.Errorf("archive anchor at seq %d (%s): its checkpoint is of row %d (%.16s…)", a.Seq, short(a.Hash), c.Seq, c.Hash)
	}
	return nil
}
