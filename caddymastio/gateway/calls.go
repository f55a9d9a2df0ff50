package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// use is one use of an upstream item by an agent through the aggregator:
// decided, limited, forwarded and audited by run.
type use struct {
	agentID  string
	session  *mcpsdk.ServerSession
	extra    *mcpsdk.RequestExtra
	it       item
	action   string // what the policy decides: tools/call, prompts/get, resources/read
	audited  string // the method the audit row names; action when empty
	args     json.RawMessage
	progress any // the agent's progress token, if it asked for progress
}

// forward makes the upstream call; progress is the token to send with it
// (nil: none). It reports the outcome for the audit row.
type forward func(ctx context.Context, up *mcpsdk.ClientSession, progress any) (outcome string, err error)

// rpcError is an error the agent gets as a JSON-RPC error.
func rpcError(code int64, format string, args ...any) error {
	return &jsonrpc.Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// principal is the agent of a use, as the audit log records it.
func (a *Aggregator) principal(id registry.Identity, extra *mcpsdk.RequestExtra) *mastio.Principal {
	p := &mastio.Principal{Identity: id, Method: "dpop"}
	if extra != nil && extra.Header != nil {
		p.JKT = extra.Header.Get(jktHeader)
	}
	return p
}

// decide is the policy's decision on an agent's use of an item.
func (a *Aggregator) decide(id registry.Identity, action, server, name string) policy.Decision {
	return a.m.Decide(id, action, server+"/"+name)
}

// allowed reports whether the agent (if active) may use the item.
func (a *Aggregator) allowed(agentID, action, server, name string) bool {
	id, active := a.m.Registry().Lookup(agentID)
	return active && a.decide(id, action, server, name).Allowed
}

// run carries out one use: the agent must still be active, within the
// server's argument size and rate limits, and allowed by the policy; the
// call goes to the agent session's own upstream session (the pool's for a
// stateless request), its progress relayed; its mcp.forward row is
// committed while the upstream works, its answer delivered only once that
// row is durable, and not at all if the agent was revoked meanwhile.
func (a *Aggregator) run(ctx context.Context, u use, call forward) error {
	id, active := a.m.Registry().Lookup(u.agentID)
	if !active {
		return rpcError(mcp.CodeForbidden, "the agent %s has been revoked", u.agentID)
	}
	actx := context.WithoutCancel(ctx) // a cancelled call is audited too
	servers, _, err := a.m.Servers(ctx)
	if err != nil {
		return rpcError(mcp.CodeInternal, "the MCP server registry cannot be read")
	}
	s := servers[u.it.server]
	if s == nil {
		return rpcError(mcp.CodeUpstream, "the MCP server %s is no longer registered", u.it.server)
	}
	rec := mastio.MCPCall{Principal: a.principal(id, u.extra), Server: u.it.server, Action: u.action, Name: u.it.name, Start: time.Now(),
		ArgsSHA256: argsSum(u.args)}
	if u.audited != "" {
		rec.Action = u.audited
	}
	if u.session != nil {
		rec.SessionID = u.session.ID()
	}
	refuse := func(outcome, reason string, e error) error {
		rec.Outcome, rec.Decision = outcome, policy.Decision{Reason: reason}
		if err := a.m.AuditMCPCall(actx, rec); err != nil {
			return rpcError(mcp.CodeInternal, "the audit log cannot be written")
		}
		return e
	}
	if int64(len(u.args)) > s.MaxArgs() {
		return refuse("denied", "arguments too large", rpcError(mcp.CodeInvalidParams, "the arguments exceed %d bytes", s.MaxArgs()))
	}
	if e := a.limit(u, s); e != nil {
		return refuse("rate_limited", "rate limited", e)
	}
	rec.Decision = a.decide(id, u.action, u.it.server, u.it.name)
	if !rec.Decision.Allowed {
		rec.Outcome = "denied"
		if err := a.m.AuditMCPCall(actx, rec); err != nil {
			return rpcError(mcp.CodeInternal, "the audit log cannot be written")
		}
		return rpcError(mcp.CodeForbidden, "%s %q on server %q is not allowed for %s (%s)", u.action, u.it.name, u.it.server, u.agentID,
			rec.Decision.Reason)
	}
	up, err := a.upstreamFor(ctx, u.session, u.it.server, s)
	if err != nil {
		return refuse("upstream_error", err.Error(), rpcError(mcp.CodeUpstream, "the MCP server %s is unavailable", u.it.server))
	}
	if d := a.sessionOf(u.session); d != nil {
		defer d.calling(ctx, u.it.server)()
	}
	var progress any
	if u.progress != nil {
		var done func()
		progress, done = a.pool.progress.register(ctx, u.session, u.progress)
		defer done()
	}
	fwd, err := a.m.ForwardMCPCall(rec)
	if err != nil {
		return rpcError(mcp.CodeInternal, "the audit log cannot be written")
	}
	tracked, stop := a.m.TrackAgent(ctx, u.agentID)
	defer stop()
	cctx, cancel := context.WithTimeout(tracked, s.CallTimeout())
	defer cancel()
	outcome, err := call(cctx, up, progress)
	a.pool.catchUp(up) // what the upstream sent before its answer reaches the agent first
	status, detail := 200, ""
	var answer error
	var rpcErr *jsonrpc.Error
	switch {
	case mastio.Withdrawn(tracked):
		if err := fwd.Finish(actx, "agent_revoked", status, "the agent's credentials were withdrawn before the answer"); err != nil {
			a.log.Error("auditing a withheld MCP answer", zap.Error(err))
		}
		return rpcError(mcp.CodeForbidden, "the agent %s was revoked before the answer: nothing was delivered", u.agentID)
	case err == nil:
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		// The agent cancelled (notifications/cancelled, or it went away):
		// the SDK has told the upstream to stop.
		outcome, detail = "cancelled", "cancelled by the agent"
		answer = err
	case errors.As(err, &rpcErr):
		outcome, detail = "error", err.Error()
		answer = err // the upstream's own JSON-RPC error reaches the agent as it is
	default:
		outcome, detail, status = "upstream_error", err.Error(), 502
		answer = rpcError(mcp.CodeUpstream, "the MCP server %s is unavailable", u.it.server)
		if errors.Is(err, context.DeadlineExceeded) {
			status = 504
			answer = rpcError(mcp.CodeUpstream, "the MCP server %s did not answer within %s", u.it.server, s.CallTimeout())
		}
		if u.session == nil || a.sessionOf(u.session) == nil {
			a.pool.drop(u.it.server) // the shared session may be broken
		}
	}
	delivered, aerr := a.m.Registry().Deliver(registry.Credential{AgentID: u.agentID}, func() error {
		return fwd.Finish(actx, outcome, status, detail)
	})
	if aerr != nil {
		return rpcError(mcp.CodeInternal, "the result was withheld: the audit log cannot be written")
	}
	if !delivered {
		if err := fwd.Finish(actx, "agent_revoked", status, "answered after the agent's credentials were withdrawn; not delivered"); err != nil {
			a.log.Error("auditing a withheld MCP answer", zap.Error(err))
		}
		return rpcError(mcp.CodeForbidden, "the agent %s was revoked before the answer: nothing was delivered", u.agentID)
	}
	return answer
}

// limit applies the server's per-agent and per-agent-per-item rate limits.
func (a *Aggregator) limit(u use, s *mastio.Server) error {
	agentRate, itemRate := s.Rates()
	for _, lim := range []struct {
		scope, key string
		rate       int
	}{{"agent", u.agentID, agentRate}, {"item", u.agentID + "\x00" + u.it.name, itemRate}} {
		if lim.rate == 0 {
			continue
		}
		l := a.m.Limiter("mcp|aggregate|"+u.it.server+"|"+lim.scope, lim.rate, time.Minute, lim.rate)
		if ok, wait := l.Allow(lim.key); !ok {
			mcpRateLimited.WithLabelValues(u.it.server, lim.scope).Inc()
			if lim.scope == "item" {
				return rateLimited(wait, "rate limit exceeded: at most %d calls a minute of %s", lim.rate, u.it.visible(u.action))
			}
			return rateLimited(wait, "rate limit exceeded: at most %d calls a minute to %s", lim.rate, u.it.server)
		}
	}
	return nil
}

// refuse answers a use of an item the policy withholds from the agent
// (not offered to it): decided again, audited, refused.
func (a *Aggregator) refuse(ctx context.Context, session any, agentID string, it item, action, sum string) error {
	id, active := a.m.Registry().Lookup(agentID)
	if !active {
		return rpcError(mcp.CodeForbidden, "the agent %s has been revoked", agentID)
	}
	d := a.decide(id, action, it.server, it.name)
	if d.Allowed { // the policy changed since the list was made
		a.invalidate()
		return rpcError(mcp.CodeInvalidParams, "%q is offered to %s since the list was read: list again", it.name, agentID)
	}
	rec := mastio.MCPCall{Principal: a.principal(id, nil), Server: it.server, Action: action, Name: it.name, Decision: d,
		ArgsSHA256: sum, Outcome: "denied", Start: time.Now()}
	if ss, ok := session.(*mcpsdk.ServerSession); ok && ss != nil {
		rec.SessionID = ss.ID()
	}
	if err := a.m.AuditMCPCall(ctx, rec); err != nil {
		return rpcError(mcp.CodeInternal, "the audit log cannot be written")
	}
	return rpcError(mcp.CodeForbidden, "%s %q on server %q is not allowed for %s (%s)", action, it.name, it.server, agentID, d.Reason)
}

// argsSum is the hex SHA-256 of a call's arguments, for the audit log
// ("" without arguments).
func argsSum(args json.RawMessage) string {
	if len(args) == 0 {
		return ""
	}
	sum := sha256.Sum256(args)
	return hex.EncodeToString(sum[:])
}
