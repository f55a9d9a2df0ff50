package caddymastio

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
)

// mcpCallRecord is what the audit log keeps of one MCP call.
type mcpCallRecord struct {
	p              *Principal
	server         string
	action, name   string
	decision       policy.Decision
	argsSum        string
	outcome        string // ok, tool_error, error, denied, rate_limited, upstream_error, no_response
	upstreamStatus int
	start          time.Time
	requestID      string
	sessionID      string
	detail         string
	// expect, if set, is the row the exchange announced before forwarding
	// (see audit.Log.Expect); appending through it settles it.
	expect *audit.Expectation
}

// auditMCPCall appends an mcp.call row and returns once it is durable; a
// failure is an error the caller must not answer past.
func (a *App) auditMCPCall(ctx context.Context, c mcpCallRecord) error {
	result := audit.ResultOK
	switch c.outcome {
	case "denied", "rate_limited":
		result = audit.ResultDenied
	case "error", "upstream_error", "no_response":
		result = audit.ResultError
	}
	rule := ""
	if c.decision.Rule != nil {
		rule = c.decision.Rule.ID
	}
	decision := "deny"
	if c.decision.Allowed {
		decision = "allow"
	}
	d := map[string]any{
		"server": c.server, "action": c.action, "name": c.name, "decision": decision, "rule": rule, "reason": c.decision.Reason,
		"args_sha256": c.argsSum, "outcome": c.outcome, "jkt": c.p.JKT, "request_id": c.requestID, "session_id": c.sessionID,
	}
	if c.decision.Allowed {
		d["duration_ms"] = float64(time.Since(c.start).Microseconds()) / 1000
		d["upstream_status"] = c.upstreamStatus
	}
	if c.detail != "" {
		d["detail"] = c.detail
	}
	ev := audit.Event{Type: "mcp.call", Actor: "agent:" + c.p.AgentID, Subject: c.server + "/" + c.name, Result: result, Details: d}
	var err error
	if c.expect != nil {
		_, err = c.expect.Append(context.WithoutCancel(ctx), ev)
	} else {
		_, err = a.Audit().Append(context.WithoutCancel(ctx), ev)
	}
	if err != nil {
		a.logger.Error("auditing an MCP call", zap.Error(err))
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("the audit log cannot be written: %w", err))
	}
	return nil
}
