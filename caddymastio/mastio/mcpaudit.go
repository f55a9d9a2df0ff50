package mastio

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
)

// MCPCall is what the audit log keeps of one MCP call.
type MCPCall struct {
	Principal      *Principal
	Server         string
	Action, Name   string
	Decision       policy.Decision
	ArgsSHA256     string
	Outcome        string // ok, tool_error, error, denied, rate_limited, upstream_error, no_response, invalid_response, agent_revoked, ...
	UpstreamStatus int
	Start          time.Time
	RequestID      string
	SessionID      string
	Detail         string
	// Request is the agent's HTTP request, when the caller has it (for
	// the decision log's remote_ip).
	Request *http.Request
}

// ErrAuditUnavailable: the audit log cannot be written; the caller must
// not answer past it.
var ErrAuditUnavailable = errors.New("the audit log cannot be written")

// AuditMCPCall records a call refused or failed before it was forwarded:
// it logs the decision (kind policy, or rate_limit), appends the mcp.call
// row and returns once it is durable; a failure wraps ErrAuditUnavailable.
func (m *Mastio) AuditMCPCall(ctx context.Context, c MCPCall) error {
	m.logCallDecision(ctx, c)
	if c.Decision.Allowed { // allowed, then failed before forwarding (upstream unavailable)
		observeUpstream(c.Server, c.Outcome, time.Since(c.Start))
	}
	if _, err := m.audit.Append(context.WithoutCancel(ctx), callEvent(c)); err != nil {
		m.log.Error("auditing an MCP call", zap.Error(err))
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, err)
	}
	return nil
}

// ForwardedCall is an allowed call on its way to the upstream, whose
// mcp.forward row is queued (see ForwardMCPCall).
type ForwardedCall struct {
	m     *Mastio
	call  MCPCall
	row   *audit.Pending
	ended bool
}

// ForwardMCPCall queues the mcp.forward row of an allowed call about to be
// forwarded: the decision (agent, DPoP key, tool, rule, digest of the
// arguments, time), everything but the outcome. It returns at once, so the
// row's commit (the fsync) runs while the upstream works; Finish waits for
// it before the answer may go. A failure (the log is closed) wraps
// ErrAuditUnavailable: the call must not be forwarded.
func (m *Mastio) ForwardMCPCall(c MCPCall) (*ForwardedCall, error) {
	ev := callEvent(c)
	ev.Type = audit.TypeMCPForward
	row, err := m.audit.Queue(ev)
	if err != nil {
		m.log.Error("auditing an MCP call", zap.Error(err))
		return nil, fmt.Errorf("%w: %w", ErrAuditUnavailable, err)
	}
	return &ForwardedCall{m: m, call: c, row: row}, nil
}

// Finish records how the call ended. It waits until the mcp.forward row is
// durable (the answer must not reach the agent before it is: a failure
// wraps ErrAuditUnavailable), logs the decision, and queues the call's
// mcp.call row, with the outcome and forward_seq, lazily: it rides with the
// next commit (see audit.Log.QueueLazily), and if a crash loses it, audit
// verify lists the call as "outcome unknown", never as missing. A second
// Finish does nothing.
func (f *ForwardedCall) Finish(ctx context.Context, outcome string, upstreamStatus int, detail string) error {
	if f.ended {
		return nil
	}
	f.ended = true
	c, m := f.call, f.m
	c.Outcome, c.UpstreamStatus, c.Detail = outcome, upstreamStatus, detail
	m.logCallDecision(ctx, c)
	observeUpstream(c.Server, c.Outcome, time.Since(c.Start))
	fwd, err := f.row.Wait()
	if err != nil {
		m.log.Error("auditing an MCP call", zap.Error(err))
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, err)
	}
	ev := callEvent(c)
	ev.Details.(map[string]any)["forward_seq"] = fwd.Seq
	if err := m.audit.QueueLazily(ev); err != nil {
		// The answer may go: its mcp.forward row is durable, and the call
		// shows as "outcome unknown".
		m.log.Error("auditing an MCP call's outcome", zap.Int64("forward_seq", fwd.Seq), zap.Error(err))
	}
	return nil
}

// callEvent is the mcp.call row of c (without the outcome: the
// mcp.forward row's content); its details are a map. It only builds.
func callEvent(c MCPCall) audit.Event {
	result := audit.ResultOK
	switch c.Outcome {
	case "denied", "rate_limited":
		result = audit.ResultDenied
	case "error", "upstream_error", "no_response", "invalid_response":
		result = audit.ResultError
	}
	rule := ""
	if c.Decision.Rule != nil {
		rule = c.Decision.Rule.ID
	}
	decision := "deny"
	if c.Decision.Allowed {
		decision = "allow"
	}
	d := map[string]any{
		"server": c.Server, "action": c.Action, "name": c.Name, "decision": decision, "rule": rule, "reason": c.Decision.Reason,
		"args_sha256": c.ArgsSHA256, "jkt": c.Principal.JKT, "request_id": c.RequestID, "session_id": c.SessionID,
	}
	if c.Outcome != "" { // an mcp.forward row has none yet
		d["outcome"] = c.Outcome
	}
	if c.Decision.Allowed && c.Outcome != "" {
		took := time.Since(c.Start)
		d["duration_ms"] = float64(took.Microseconds()) / 1000
		d["upstream_status"] = c.UpstreamStatus
	}
	if c.Detail != "" {
		d["detail"] = c.Detail
	}
	return audit.Event{Type: audit.TypeMCPCall, Actor: "agent:" + c.Principal.AgentID, Subject: c.Server + "/" + c.Name, Result: result, Details: d}
}

func (m *Mastio) logCallDecision(ctx context.Context, c MCPCall) {
	kind, rule := KindPolicy, ""
	switch {
	case c.Outcome == "rate_limited":
		kind = KindRateLimit
	case c.Decision.Allowed:
		mcpCalls.WithLabelValues(c.Server, "allow").Inc()
	default:
		mcpCalls.WithLabelValues(c.Server, "deny").Inc()
	}
	if c.Decision.Allowed && !m.decisionLog.Core().Enabled(zapcore.DebugLevel) {
		return // allows are logged at debug level: build nothing for a line nobody writes
	}
	if c.Decision.Rule != nil {
		rule = c.Decision.Rule.ID
	}
	msg := "MCP call allowed"
	if !c.Decision.Allowed {
		msg = "MCP call denied"
	}
	d := Decision{Kind: kind, Allow: c.Decision.Allowed, Reason: c.Decision.Reason, AgentID: c.Principal.AgentID, JKT: c.Principal.JKT,
		Rule: rule, Fields: []zap.Field{zap.String("server", c.Server), zap.String("action", c.Action), zap.String("name", c.Name),
			zap.String("outcome", c.Outcome), zap.String("rpc_id", c.RequestID), zap.String("session_id", c.SessionID)}}
	if c.Request != nil {
		m.LogDecision(c.Request, msg, d)
	} else {
		m.LogDecisionContext(ctx, msg, d)
	}
}
