package mastio

import (
	"context"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
)

// Refusals that name an agent are audited one by one, up to
// refusalAuditRate a minute per agent (a revoked agent's token replayed in
// a loop must not flood the chain); beyond it they are counted, and the
// count is carried by the agent's next audited refusal ("unaudited_before").
// Anonymous refusals are never audited one by one: they are counted in
// metrics and logged with sampling.
const refusalAuditRate = 120

// refusalAudit limits the audited refusals of each agent.
type refusalAudit struct {
	limit *ratelimit.Limiter

	mu      sync.Mutex
	skipped map[string]int // agent -> refusals not audited since its last row
}

func newRefusalAudit() *refusalAudit {
	return &refusalAudit{limit: ratelimit.New(refusalAuditRate, time.Minute, refusalAuditRate, 100_000),
		skipped: map[string]int{}}
}

// admit reports whether a refusal of agentID is audited now and, if so,
// how many were not since its previous row.
func (ra *refusalAudit) admit(agentID string) (bool, int) {
	ok, _ := ra.limit.Allow(agentID)
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if !ok {
		if len(ra.skipped) < 100_000 || ra.skipped[agentID] > 0 {
			ra.skipped[agentID]++
		}
		return false, 0
	}
	n := ra.skipped[agentID]
	delete(ra.skipped, agentID)
	return true, n
}

// AuditRefusal appends a row (eventType auth.refused, mcp.refused) for a
// refused request of a known agent. The refusal stands whether or not the
// row can be written; a failure is logged.
func (m *Mastio) AuditRefusal(r *http.Request, eventType, agentID string, status int, reason, message string, extra map[string]any) {
	d := map[string]any{"status": status, "reason": reason, "message": message, "method": r.Method,
		"path": m.RequestPath(r), "remote_ip": m.ClientIP(r)}
	for k, v := range extra {
		d[k] = v
	}
	m.AuditRefusalDetails(context.WithoutCancel(r.Context()), eventType, agentID, d)
}

// AuditRefusalDetails appends the refusal row with its details, within
// the agent's audited-refusal rate.
func (m *Mastio) AuditRefusalDetails(ctx context.Context, eventType, agentID string, d map[string]any) {
	ok, skipped := m.refusals.admit(agentID)
	if !ok {
		refusalsUnaudited.WithLabelValues(eventType).Inc()
		return
	}
	if skipped > 0 {
		d["unaudited_before"] = skipped
	}
	if _, err := m.audit.Append(ctx, audit.Event{Type: eventType, Actor: "agent:" + agentID,
		Subject: agentID, Result: audit.ResultDenied, Details: d}); err != nil {
		m.log.Error("auditing a refusal", zap.String("event_type", eventType), zap.String("agent_id", agentID), zap.Error(err))
	}
}

// sampledLogger logs at most 10 lines a minute per message and level, then
// one in 100: anonymous refusals are logged without letting a flood of
// them flood the log.
func sampledLogger(l *zap.Logger) *zap.Logger {
	return l.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return zapcore.NewSamplerWithOptions(c, time.Minute, 10, 100)
	}))
}
