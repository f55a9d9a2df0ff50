package mastio

import (
	"context"
	"io"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// ExportAudit writes the audit rows f selects to w in format (see
// audit.Export), then records who exported what (audit.exported): an
// auditor sees every copy that left the Mastio. A failed export is
// recorded too, with the rows written before the failure.
func (m *Mastio) ExportAudit(ctx context.Context, f store.AuditFilter, format string, w io.Writer, details map[string]any) (audit.Exported, error) {
	m.audit.Flush() // the outcome rows of calls already answered
	out, err := audit.Export(ctx, m.store, f, format, w)
	d := mergeMaps(map[string]any{"format": format, "rows": out.Rows, "first_seq": out.First, "last_seq": out.Last,
		"filter": auditFilterDetails(f)}, details)
	ev := audit.Event{Type: "audit.exported", Actor: ActorOf(ctx), Subject: "audit", Details: d}
	if err != nil {
		ev.Result, d["error"] = audit.ResultError, err.Error()
	}
	if _, aerr := m.audit.Append(context.WithoutCancel(ctx), ev); aerr != nil && err == nil {
		err = aerr
	}
	return out, err
}

func auditFilterDetails(f store.AuditFilter) map[string]any {
	d := map[string]any{}
	if f.From > 1 {
		d["from_seq"] = f.From
	}
	if f.To > 0 {
		d["to_seq"] = f.To
	}
	if !f.Since.IsZero() {
		d["start"] = f.Since.UTC().Format(audit.TimeFormat)
	}
	if !f.Before.IsZero() {
		d["end"] = f.Before.UTC().Format(audit.TimeFormat)
	}
	if f.Type != "" {
		d["event_type"] = f.Type
	}
	if f.Actor != "" {
		d["actor"] = f.Actor
	}
	if f.Limit > 0 {
		d["limit"] = f.Limit
	}
	return d
}

// VerifyAudit walks the chain from seq from to seq to (see audit.Verify)
// and, when the walk starts from an archive anchor, checks the anchor's
// signature against the Org root: a forged anchor is a break at its seq.
func (m *Mastio) VerifyAudit(ctx context.Context, from, to int64) (audit.VerifyResult, error) {
	m.audit.Flush()
	res, err := audit.Verify(ctx, m.store, from, to)
	if err != nil || !res.OK() || res.Anchor.Seq == 0 {
		return res, err
	}
	if err := audit.VerifyAnchor(res.Anchor, m.ca.RootPool()); err != nil {
		res.FirstBad, res.Reason = res.Anchor.Seq, err.Error()
	}
	return res, nil
}

// QueryAudit calls fn with the audit rows f selects, in chain order,
// without recording a read (the dashboard's pages; an export is recorded,
// see ExportAudit).
func (s *Shared) QueryAudit(ctx context.Context, f store.AuditFilter, fn func(store.AuditRow) error) error {
	s.audit.Flush()
	return s.store.AuditRows(ctx, f, fn)
}
