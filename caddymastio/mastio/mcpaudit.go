package mastio

import (
	"context"
	"errors"
	"fmt"
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
}

// ErrAuditUnavailable: the audit log cannot be written; the caller must
// not answer past it.
var ErrAuditUnavailable = errors.New("the audit log cannot be written")

// AuditMCPCall appends an mcp.call row and returns once it is durable; a
// failure wraps ErrAuditUnavailable.
func (m *Mastio) AuditMCPCall(ctx context.Context, c MCPCall) error {
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
		d["duration_ms"] = float64(time.Since(c.Start).Microseconds()) / 1000
		d["upstream_status"] = c.UpstreamStatus
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
