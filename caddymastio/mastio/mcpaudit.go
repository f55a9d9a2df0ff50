package mastio

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

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
	Outcome        string // ok, tool_error, error, denied, rate_limited, upstream_error, no_response, agent_revoked, ...
	UpstreamStatus int
	Start          time.Time
	RequestID      string
	SessionID      string
	Detail         string
	// Expect, if set, is the row the caller announced before forwarding
	// (see audit.Log.Expect); appending through it settles it.
	Expect *audit.Expectation
	// Request is the agent's HTTP request, when the caller has it (for
	// the decision log's remote_ip).
	Request *http.Request
}

// ErrAuditUnavailable: the audit log cannot be written; the caller must
// not answer past it.
var ErrAuditUnavailable = errors.New("the audit log cannot be written")

// AuditMCPCall logs the call's decision (kind policy, or rate_limit),
// appends an mcp.call row and returns once it is durable; a failure wraps
// ErrAuditUnavailable.
func (m *Mastio) AuditMCPCall(ctx context.Context, c MCPCall) error {
	m.logCallDecision(ctx, c)
	result := audit.ResultOK
	switch c.Outcome {
	case "denied", "rate_limited":
		result = audit.ResultDenied
	case "error", "upstream_error", "no_response":
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
		"args_sha256": c.ArgsSHA256, "outcome": c.Outcome, "jkt": c.Principal.JKT, "request_id": c.RequestID, "session_id": c.SessionID,
	}
	if c.Decision.Allowed {
		took := time.Since(c.Start)
		d["duration_ms"] = float64(took.Microseconds()) / 1000
		d["upstream_status"] = c.UpstreamStatus
		observeUpstream(c.Server, c.Outcome, took)
	}
	if c.Detail != "" {
		d["detail"] = c.Detail
	}
	ev := audit.Event{Type: "mcp.call", Actor: "agent:" + c.Principal.AgentID, Subject: c.Server + "/" + c.Name, Result: result, Details: d}
	var err error
	if c.Expect != nil {
		_, err = c.Expect.Append(context.WithoutCancel(ctx), ev)
	} else {
		_, err = m.audit.Append(context.WithoutCancel(ctx), ev)
	}
	if err != nil {
		m.log.Error("auditing an MCP call", zap.Error(err))
		return fmt.Errorf("%w: %w", ErrAuditUnavailable, err)
	}
	return nil
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
