package audit

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
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
}

// OK reports whether every row in the range verified.
func (v VerifyResult) OK() bool { return v.FirstBad == 0 }

// Verify walks the chain from seq from to seq to (inclusive; to <= 0 means
// the newest row) and reports the first row whose link or hash is wrong.
// For from > 1 the stored hash of row from-1 is taken as the anchor.
func Verify(ctx context.Context, db *sql.DB, from, to int64) (VerifyResult, error) {
	if from < 1 {
		from = 1
	}
	if to <= 0 {
		var err error
		if to, _, err = head(ctx, db); err != nil {
			return VerifyResult{}, err
		}
	}
	res := VerifyResult{From: from, To: to}
	prev := GenesisHash
	if from > 1 {
		err := db.QueryRowContext(ctx, `SELECT hash FROM audit_events WHERE seq = ?`, from-1).Scan(&prev)
		if errors.Is(err, sql.ErrNoRows) {
			res.FirstBad, res.Reason = from-1, "row is missing"
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("audit: reading anchor row %d: %w", from-1, err)
		}
	}
	rows, err := db.QueryContext(ctx, `SELECT seq, time, event_type, actor, subject, result, details, prev_hash, hash
		FROM audit_events WHERE seq BETWEEN ? AND ? ORDER BY seq`, from, to)
	if err != nil {
		return res, fmt.Errorf("audit: reading rows: %w", err)
	}
	defer rows.Close()
	want := from
	for rows.Next() {
		var r Record
		var ts, details string
		if err := rows.Scan(&r.Seq, &ts, &r.Type, &r.Actor, &r.Subject, &r.Result, &details, &r.PrevHash, &r.Hash); err != nil {
			return res, fmt.Errorf("audit: reading row: %w", err)
		}
		if r.Seq != want {
			res.FirstBad, res.Reason = want, fmt.Sprintf("row is missing (next row is %d)", r.Seq)
			return res, nil
		}
		want++
		if !bytes.Equal(r.PrevHash, prev) {
			res.FirstBad, res.Reason = r.Seq, fmt.Sprintf("prev_hash %s does not match the hash of row %d (%s)",
				short(r.PrevHash), r.Seq-1, short(prev))
			return res, nil
		}
		t, err := time.Parse(TimeFormat, ts)
		if err != nil || t.UTC().Format(TimeFormat) != ts {
			res.FirstBad, res.Reason = r.Seq, fmt.Sprintf("time %q is not in the canonical format", ts)
			return res, nil
		}
		r.Time = t
		r.Details = []byte(details)
		got, err := r.ComputeHash()
		if err != nil {
			res.FirstBad, res.Reason = r.Seq, fmt.Sprintf("row content is not valid: %v", err)
			return res, nil
		}
		if !bytes.Equal(got, r.Hash) {
			res.FirstBad, res.Reason = r.Seq, fmt.Sprintf("stored hash %s does not match the row content (%s)",
				short(r.Hash), short(got))
			return res, nil
		}
		prev = r.Hash
		res.Checked++
		res.HeadHash = r.Hash
	}
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("audit: reading rows: %w", err)
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
