package admin

import (
	"context"
	"net/http"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
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
