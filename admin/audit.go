package admin

import (
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// exportAudit streams the selected rows. Once the first byte is out the
// status cannot change: an export that fails midway is cut off (the
// connection is aborted, never ended cleanly), so a client cannot take a
// truncated export for a whole one.
func (a *API) exportAudit(w http.ResponseWriter, r *http.Request, c Caller) {
	f, format, qerr := audit.ParseExportQuery(r.URL.Query())
	if qerr != nil {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: 400, Code: "invalid_query", Field: qerr.Field, Message: qerr.Error()})
		return
	}
	ctype := "application/x-ndjson"
	if format == audit.FormatCSV {
		ctype = "text/csv; charset=utf-8"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Disposition", `attachment; filename="mastio-audit.`+format+`"`)
	w.Header().Set("Cache-Control", "no-store")
	sent := &sentWriter{w: w}
	out, err := a.m.ExportAudit(r.Context(), f, format, sent, c.details())
	if err == nil {
		return
	}
	a.log.Error("audit export failed", zap.Int64("rows_written", out.Rows), zap.Error(err))
	if !sent.any {
		a.fail(w, r, err)
		return
	}
	panic(http.ErrAbortHandler)
}

// sentWriter notes whether anything was written.
type sentWriter struct {
	w   http.ResponseWriter
	any bool
}

func (s *sentWriter) Write(b []byte) (int, error) {
	s.any = s.any || len(b) > 0
	return s.w.Write(b)
}

// AuditHead is the answer to GET /v1/admin/audit/head: the chain's head,
// and the Mastio's signed checkpoint of it for external witnesses (verify
// it with audit.VerifyCheckpoint against the Org root).
type AuditHead struct {
	audit.Checkpoint
	JWS string `json:"jws"`
}

// Head signs the chain's head as it is now.
func (a *API) Head(ctx context.Context) (*AuditHead, error) {
	c, jws, err := a.m.AuditCheckpoint(ctx)
	if err != nil {
		return nil, err
	}
	return &AuditHead{Checkpoint: c, JWS: jws}, nil
}

// BundleRequest is the body of POST /v1/admin/audit/bundle: the rows to
// bundle, by time (RFC 3339; start inclusive, end exclusive) or by seq
// (inclusive); an omitted bound is the chain's first or newest row. A
// bundle is always a whole seq range, so that it verifies on its own.
type BundleRequest struct {
	Start   *time.Time `json:"start"`
	End     *time.Time `json:"end"`
	FromSeq int64      `json:"from_seq"`
	ToSeq   int64      `json:"to_seq"`
}

// bundle writes the bundle (application/gzip). Like an export, a failure
// once the first byte is out aborts the connection.
func (a *API) bundle(w http.ResponseWriter, r *http.Request, c Caller) {
	var req BundleRequest
	if !decode(w, r, true, &req) {
		return
	}
	from, to := req.FromSeq, req.ToSeq
	if req.Start != nil || req.End != nil {
		if from != 0 || to != 0 {
			httpjson.Error(w, 400, "invalid_request", "give start/end or from_seq/to_seq, not both")
			return
		}
		var since, before time.Time
		if req.Start != nil {
			since = *req.Start
		}
		if req.End != nil {
			before = *req.End
		}
		var err error
		if from, to, err = a.m.AuditSeqRange(r.Context(), since, before); err != nil {
			a.fail(w, r, err)
			return
		}
		if from == 0 {
			httpjson.Error(w, 404, "no_rows", "no audit rows in that time range")
			return
		}
	}
	if from < 0 || to < 0 || (to > 0 && to < from) {
		httpjson.Error(w, 400, "invalid_request", "from_seq and to_seq must be a range of seqs")
		return
	}
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("Content-Disposition", `attachment; filename="mastio-audit-bundle.tar.gz"`)
	sent := &sentWriter{w: w}
	if _, err := a.m.AuditBundle(r.Context(), from, to, sent, c.details()); err != nil {
		if sent.any {
			a.log.Error("audit bundle failed midway", zap.Error(err))
			panic(http.ErrAbortHandler)
		}
		w.Header().Del("Content-Disposition")
		var re *audit.RangeError
		if errors.As(err, &re) {
			httpjson.Error(w, 400, "invalid_range", err.Error())
			return
		}
		a.fail(w, r, err)
	}
}

// ArchiveRequest is the body of POST /v1/admin/audit/archive: remove the
// rows up to through_seq, which the caller holds in an archive it has
// verified (a bundle of them, as caddy mastio audit archive writes).
// through_hash is the archive's last hash (its manifest's last_hash) and
// must be that row's hash here; archive_sha256 is the archive file's
// SHA-256, kept with the anchor. Everything hex.
type ArchiveRequest struct {
	ThroughSeq    int64  `json:"through_seq"`
	ThroughHash   string `json:"through_hash"`
	ArchiveSHA256 string `json:"archive_sha256"`
}

// Archive removes archived rows, leaving a signed anchor.
func (a *API) Archive(ctx context.Context, c Caller, req ArchiveRequest) (*mastio.Archived, error) {
	return a.m.ArchiveAudit(ctx, req.ThroughSeq, req.ThroughHash, req.ArchiveSHA256, c.details())
}

// Verified is the answer to GET /v1/admin/audit/verify: the walk of the
// chain (from its archive anchor, whose signature is checked), and the
// first row that does not verify, if one does not.
type Verified struct {
	OK        bool   `json:"ok"`
	From      int64  `json:"from_seq"`
	To        int64  `json:"to_seq"`
	Checked   int64  `json:"rows_verified"`
	FirstBad  int64  `json:"first_bad_seq,omitempty"`
	Reason    string `json:"reason,omitempty"`
	HeadHash  string `json:"head_hash,omitempty"`
	AnchorSeq int64  `json:"anchor_seq,omitempty"`
	// OutcomeUnknown counts the forwarded MCP calls whose mcp.call
	// (outcome) row is not in the range: calls still at their upstream,
	// or whose outcome a crash lost. The chain is intact either way.
	OutcomeUnknown audit.OutcomeUnknown `json:"outcome_unknown"`
}

// Verify walks the chain from ?from_seq to ?to_seq (default: all of it).
func (a *API) Verify(ctx context.Context, q url.Values) (*Verified, error) {
	var bounds [2]int64
	for i, name := range []string{"from_seq", "to_seq"} {
		if v := q.Get(name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return nil, invalid(name, "%s must be a seq", name)
			}
			bounds[i] = n
		}
	}
	res, err := a.m.VerifyAudit(ctx, bounds[0], bounds[1])
	if err != nil {
		return nil, err
	}
	return &Verified{OK: res.OK(), From: res.From, To: res.To, Checked: res.Checked, FirstBad: res.FirstBad, Reason: res.Reason,
		HeadHash: hex.EncodeToString(res.HeadHash), AnchorSeq: res.Anchor.Seq, OutcomeUnknown: res.Unknown}, nil
}
