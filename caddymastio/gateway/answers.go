package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// The answer side of an exchange: what the agent gets from the upstream
// (filtered, audited, re-encoded), and the answers the gateway gives when
// the upstream fails or the agent's credentials are withdrawn.

// upstreamFailed answers every forwarded request with a JSON-RPC error
// when the upstream could not be reached or timed out. The answer is HTTP
// 200: MCP clients surface JSON-RPC errors only from successful HTTP
// responses (a 502 or 504 reaches the user as a bare transport error); the
// HTTP status the upstream failure stands for is in the audit row.
func (x *exchange) upstreamFailed(w http.ResponseWriter, ctx context.Context, err error) error {
	msg := "the MCP server " + x.g.cfg.Server + " is unavailable"
	status := http.StatusBadGateway
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		msg = fmt.Sprintf("the MCP server %s did not answer within %s", x.g.cfg.Server, x.g.cfg.Timeout)
		status = http.StatusGatewayTimeout
	}
	x.g.log.Error("MCP upstream failed", zap.String("server", x.g.cfg.Server), zap.Error(err))
	for _, c := range x.calls {
		c.done = true
		if err := x.auditCall(c, "upstream_error", status, err.Error()); err != nil {
			return err
		}
	}
	x.answerUnanswered(w, msg)
	return nil
}

// answerUnanswered answers each forwarded request with a JSON-RPC error
// saying why (HTTP 200, see upstreamFailed), with the gateway's own
// answers.
func (x *exchange) answerUnanswered(w http.ResponseWriter, msg string) {
	var answers []json.RawMessage
	for _, m := range x.forwarded {
		answers = append(answers, mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeUpstream, Message: msg}))
	}
	if len(answers) == 0 && len(x.denied) == 0 {
		w.WriteHeader(http.StatusAccepted) // only notifications were sent
		return
	}
	writeRPC(w, http.StatusOK, x.joined(answers))
}

// withdrawn ends an exchange whose agent was revoked (or whose certificate
// was rotated out) while the upstream worked: calls not yet answered are
// audited as such and nothing more is delivered.
func (x *exchange) withdrawn(w http.ResponseWriter, sent bool) error {
	x.finishCalls(http.StatusUnauthorized, "agent_revoked", "the agent's credentials were withdrawn before the answer")
	x.g.log.Info("MCP exchange ended: the agent's credentials were withdrawn", zap.String("server", x.g.cfg.Server),
		zap.String("agent_id", x.p.AgentID))
	if !sent {
		writeRPC(w, http.StatusUnauthorized, mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeForbidden,
			Message: "the agent " + x.p.AgentID + " was revoked (or its certificate rotated out) before the answer: nothing was delivered"}))
	}
	return nil
}

// deliver turns one message from the upstream into what the agent gets:
// list results filtered, a call's result audited first (and withheld if
// the agent's credentials were withdrawn, or the audit failed), the
// message re-encoded from what was read. nil means nothing is delivered.
func (x *exchange) deliver(m *mcp.Message, upstreamStatus int) json.RawMessage {
	if !m.IsResponse() {
		return m.Encode()
	}
	if m.Result != nil {
		filtered, _, err := mcp.FilterLists(m.Result, func(k mcp.ListKind, name string) bool {
			return x.g.m.Decide(x.p.Identity, k.Action, x.g.cfg.Server+"/"+name).Allowed
		})
		if err != nil {
			return x.unreadable(m, upstreamStatus, "a list the gateway cannot filter", err)
		}
		m.Result = filtered
	}
	c, ok := x.calls[m.Key()]
	if !ok || c.done {
		return m.Encode()
	}
	outcome := "ok"
	switch {
	case m.Error != nil:
		outcome = "error"
	case c.action == "tools/call": // isError means something in a tool's result only
		toolError, err := mcp.ToolError(m.Result)
		if err != nil {
			return x.unreadable(m, upstreamStatus, "a result the gateway cannot read strictly", err)
		}
		if toolError {
			outcome = "tool_error"
		}
	}
	c.done = true
	delivered, err := x.g.m.Registry().Deliver(x.p.Credential(), func() error {
		return x.auditCall(c, outcome, upstreamStatus, "")
	})
	if err != nil {
		return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeInternal, Message: "the result was withheld: the audit log cannot be written"})
	}
	if !delivered {
		x.withheld = true
		if err := x.auditCall(c, "agent_revoked", upstreamStatus, "answered after the agent's credentials were withdrawn; not delivered"); err != nil {
			x.g.log.Error("auditing a withheld MCP answer", zap.Error(err))
		}
		return nil
	}
	return m.Encode()
}

// unreadable is what the agent gets in place of a result the gateway
// cannot read (what says which, err why): a JSON-RPC error, and the call it
// answers is audited as an invalid response.
func (x *exchange) unreadable(m *mcp.Message, upstreamStatus int, what string, err error) json.RawMessage {
	x.g.log.Warn("MCP answer withheld: the MCP server sent "+what, zap.String("server", x.g.cfg.Server), zap.Error(err))
	if c, ok := x.calls[m.Key()]; ok && !c.done {
		c.done = true
		if err := x.auditCall(c, "invalid_response", upstreamStatus, "the MCP server sent "+what); err != nil {
			x.g.log.Error("auditing an MCP call whose answer was withheld", zap.String("server", x.g.cfg.Server), zap.String("name", c.name), zap.Error(err))
		}
	}
	return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeUpstream, Message: "the MCP server sent " + what})
}

// deliverBody processes a body (or SSE event data) from the upstream into
// the messages the agent gets. ok is false when it cannot be read
// strictly: nothing of it is delivered.
func (x *exchange) deliverBody(data []byte, upstreamStatus int) ([]json.RawMessage, bool) {
	msgs, _, perr := mcp.ParseBody(data)
	if perr != nil {
		mcpMessagesDropped.WithLabelValues(x.g.cfg.Server).Inc()
		x.g.log.Warn("MCP server sent a message the gateway cannot read strictly; not delivered", zap.String("server", x.g.cfg.Server),
			zap.String("error", perr.Message))
		return nil, false
	}
	out := make([]json.RawMessage, 0, len(msgs))
	for _, m := range msgs {
		if b := x.deliver(m, upstreamStatus); b != nil {
			out = append(out, b)
		}
	}
	return out, true
}

// finishCalls audits forwarded calls that got no answer. No answer
// depends on these rows, so a failure to write one is logged, not sent.
func (x *exchange) finishCalls(status int, outcome, detail string) {
	if mastio.Withdrawn(x.r.Context()) {
		outcome, detail = "agent_revoked", "the agent's credentials were withdrawn before the answer"
	}
	for _, c := range x.calls {
		if !c.done {
			c.done = true
			if err := x.auditCall(c, outcome, status, detail); err != nil {
				x.g.log.Error("auditing an unanswered MCP call", zap.String("server", x.g.cfg.Server), zap.String("name", c.name), zap.Error(err))
			}
		}
	}
}
