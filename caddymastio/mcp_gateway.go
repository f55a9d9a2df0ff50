package caddymastio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
)

func init() {
	caddy.RegisterModule(MCPGateway{})
	httpcaddyfile.RegisterHandlerDirective("mastio_mcp", parseMCPDirective)
	httpcaddyfile.RegisterDirectiveOrder("mastio_mcp", httpcaddyfile.Before, "reverse_proxy")
}

// MCPGateway enforces MCP policy in front of the handler that proxies to
// one MCP server (reverse_proxy), for Streamable HTTP in every revision:
// JSON and SSE responses, Mcp-Session-Id sessions, GET streams, and the
// stateless 2026-07-28 revision whose Mcp-Method and Mcp-Name headers must
// agree with the body.
//
// Each POSTed JSON-RPC message (batches too) is parsed and decided:
//
//   - tools/call, resources/read, prompts/get: forwarded only if the policy
//     allows this agent this item on this server (resource
//     <server>/<name>); otherwise the gateway answers a JSON-RPC error
//     (HTTP 200, code -32000) naming the deciding rule, and the request
//     never reaches the server. Per-agent and per-agent-per-item rate
//     limits apply (429 with Retry-After).
//   - tools/list, prompts/list, resources/list, resources/templates/list:
//     the server's answer, JSON or SSE, is filtered to the items the agent
//     may use; pagination (nextCursor) is kept.
//   - anything else passes through unchanged.
//
// Every call and every denial is audited (mcp.call: agent, DPoP key,
// server, item, decision and rule, SHA-256 of the arguments, duration,
// upstream status) and committed before the client sees the answer.
//
// The caller must be an agent: mastio_auth before this handler, or this
// handler authenticates the DPoP-bound token itself. A session
// (Mcp-Session-Id) belongs to the agent that opened it.
type MCPGateway struct {
	// Server is this upstream's name in policy resources (<server>/<name>).
	Server string `json:"server,omitempty"`

	// Largest request body accepted. Default: 1048576 (1 MiB).
	MaxRequestBytes int64 `json:"max_request_bytes,omitempty"`

	// Largest JSON (not streamed) response read for filtering. Larger
	// answers are refused with a JSON-RPC error. Default: 16777216 (16 MiB).
	MaxResponseBytes int64 `json:"max_response_bytes,omitempty"`

	// How long a POST may take end to end before the gateway answers a
	// JSON-RPC error. Default: 60s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Calls per minute per agent on this server. Default: 600. -1: none.
	AgentRate int `json:"agent_rate,omitempty"`

	// Calls per minute per agent per item (tool, prompt, resource).
	// Default: 120. -1: none.
	ItemRate int `json:"item_rate,omitempty"`

	app        *App
	logger     *zap.Logger
	agentLimit *ratelimit.Limiter
	itemLimit  *ratelimit.Limiter
}

// CaddyModule returns the Caddy module information.
func (MCPGateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mastio_mcp",
		New: func() caddy.Module { return new(MCPGateway) },
	}
}

// Provision attaches the gateway to the mastio app.
func (g *MCPGateway) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	g.app = app.(*App)
	if g.MaxRequestBytes == 0 {
		g.MaxRequestBytes = 1 << 20
	}
	if g.MaxResponseBytes == 0 {
		g.MaxResponseBytes = 16 << 20
	}
	if g.Timeout == 0 {
		g.Timeout = caddy.Duration(60 * time.Second)
	}
	if g.AgentRate == 0 {
		g.AgentRate = 600
	}
	if g.ItemRate == 0 {
		g.ItemRate = 120
	}
	if g.AgentRate > 0 {
		g.agentLimit = g.app.state.limiter("mcp|"+g.Server+"|agent", g.AgentRate, time.Minute, g.AgentRate)
	}
	if g.ItemRate > 0 {
		g.itemLimit = g.app.state.limiter("mcp|"+g.Server+"|item", g.ItemRate, time.Minute, g.ItemRate)
	}
	return nil
}

// Validate checks the configuration.
func (g *MCPGateway) Validate() error {
	if g.Server == "" || strings.ContainsAny(g.Server, "/ \t") {
		return fmt.Errorf("server %q: a name without spaces or slashes is required (it is the <server> of policy resources)", g.Server)
	}
	if g.MaxRequestBytes < 0 || g.MaxResponseBytes < 0 || g.Timeout < 0 {
		return errors.New("max_request_bytes, max_response_bytes and timeout must be positive")
	}
	return nil
}

// call is a forwarded call the gateway waits to see answered.
type call struct {
	msg      *mcp.Message
	action   string
	name     string
	decision policy.Decision
	argsSum  string
	start    time.Time
	done     bool
}

// exchange is the state of one request through the gateway.
type exchange struct {
	g         *MCPGateway
	r         *http.Request
	p         *Principal
	pol       policy.Principal
	calls     map[string]*call
	denied    []json.RawMessage // answers the gateway gives itself
	forwarded []*mcp.Message    // requests sent to the upstream
	batch     bool
	sessionID string
	expect    *audit.Expectation // the audit row announced before forwarding
	withheld  bool               // an answer was withheld: the agent's credentials were withdrawn
}

// singleHeaders may appear once: the gateway and the upstream must not
// read different values of them.
var singleHeaders = []string{"Mcp-Session-Id", "Mcp-Method", "Mcp-Name", "Mcp-Protocol-Version", "Last-Event-Id", "Content-Type"}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (g *MCPGateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return g.app.serveRedacted(w, r, func(w http.ResponseWriter, r *http.Request) error { return g.serve(w, r, next) })
}

func (g *MCPGateway) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !g.app.readyOrRefuse(w) {
		return nil
	}
	ar, ok := g.app.authenticateAgent(w, r, g.logger)
	if !ok {
		return nil
	}
	defer ar.done()
	r = ar.r
	x := &exchange{g: g, r: r, p: ar.p, pol: ar.pol, calls: map[string]*call{}, sessionID: r.Header.Get("Mcp-Session-Id")}
	for _, h := range singleHeaders {
		if len(r.Header.Values(h)) > 1 {
			return x.refuse(w, http.StatusBadRequest, "ambiguous_header", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
				Message: fmt.Sprintf("Invalid Request: the %s header appears more than once", h)})
		}
	}
	if x.sessionID != "" {
		owner, known := g.app.state.sessionOwner(g.Server, x.sessionID)
		if !known {
			// Not opened through this gateway (or before a restart): its
			// owner is unknown, so it is not honoured. 404 is what MCP
			// clients take as "session expired, initialize again".
			writeRPC(w, http.StatusNotFound, mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
				Message: "unknown MCP session: initialize a new one"}))
			return nil
		}
		if owner != x.p.AgentID {
			g.logger.Warn("MCP session used by another agent", zap.String("server", g.Server), zap.String("agent_id", x.p.AgentID),
				zap.String("session_owner", owner))
			return x.refuse(w, http.StatusForbidden, "session_of_another_agent", nil, &mcp.Error{Code: mcp.CodeForbidden,
				Message: "this MCP session belongs to another agent"})
		}
	}
	// The upstream must answer in a form the gateway can read and filter.
	r.Header.Del("Accept-Encoding")
	switch r.Method {
	case http.MethodPost:
		return x.serve(w, next)
	case http.MethodGet:
		// A GET stream (and a replay after Last-Event-ID) carries answers
		// too: they are filtered like those of a POST.
		rw := &mcpWriter{w: w, x: x, limit: g.MaxResponseBytes}
		err := next.ServeHTTP(rw, r)
		if err != nil && !rw.sent {
			return err
		}
		return rw.finish()
	}
	return next.ServeHTTP(w, r) // DELETE ends a session; the upstream answers other methods
}

func writeRPC(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// refuse answers a request the gateway will not forward, audited as
// mcp.refused (it names the agent).
func (x *exchange) refuse(w http.ResponseWriter, status int, reason string, id json.RawMessage, e *mcp.Error) error {
	x.g.app.auditRefusal(x.r, "mcp.refused", x.p.AgentID, status, reason, e.Message,
		map[string]any{"server": x.g.Server, "session_id": x.sessionID})
	writeRPC(w, status, mcp.ErrorResponse(id, e))
	return nil
}

func (x *exchange) serve(w http.ResponseWriter, next caddyhttp.Handler) error {
	g, r := x.g, x.r
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.MaxRequestBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return x.refuse(w, http.StatusRequestEntityTooLarge, "request_too_large", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
				Message: fmt.Sprintf("the request body exceeds %d bytes", g.MaxRequestBytes)})
		}
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	msgs, batch, perr := mcp.ParseBody(body)
	if perr != nil {
		return x.refuse(w, http.StatusBadRequest, "invalid_message", nil, perr)
	}
	x.batch = batch
	if herr := checkHeaders(r, msgs, batch); herr != nil {
		return x.refuse(w, http.StatusBadRequest, "header_mismatch", msgs[0].ID, herr)
	}
	forward := make([]json.RawMessage, 0, len(msgs))
	limited := time.Duration(0)
	for _, m := range msgs {
		if !m.IsRequest() {
			forward = append(forward, m.Encode())
			continue
		}
		action, name, named, terr := mcp.Target(m)
		if !named {
			forward = append(forward, m.Encode())
			x.forwarded = append(x.forwarded, m)
			continue
		}
		if terr != nil {
			x.denied = append(x.denied, mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeInvalidParams, Message: "Invalid params: " + terr.Error()}))
			continue
		}
		c := &call{msg: m, action: action, name: name, start: time.Now()}
		if args := mcp.Arguments(m); args != nil {
			sum := sha256.Sum256(args)
			c.argsSum = hex.EncodeToString(sum[:])
		}
		if wait, ok := x.rateLimit(name); !ok {
			limited = max(limited, wait)
			c.decision = policy.Decision{Reason: "rate limited"}
			if err := x.auditCall(c, "rate_limited", 0, ""); err != nil {
				return err
			}
			x.denied = append(x.denied, mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeRateLimited,
				Message: fmt.Sprintf("rate limit exceeded for %s; retry in %ds", name, int(math.Ceil(wait.Seconds())))}))
			continue
		}
		c.decision = g.app.decide(x.pol, action, g.Server+"/"+name)
		if !c.decision.Allowed {
			mcpCalls.WithLabelValues(g.Server, "deny").Inc()
			if err := x.auditCall(c, "denied", 0, ""); err != nil {
				return err
			}
			g.logger.Info("MCP call denied", zap.String("agent_id", x.p.AgentID), zap.String("server", g.Server),
				zap.String("action", action), zap.String("name", name), zap.String("reason", c.decision.Reason))
			x.denied = append(x.denied, mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeForbidden,
				Message: fmt.Sprintf("%s %q on server %q is not allowed for %s (%s)", action, name, g.Server, x.p.AgentID, c.decision.Reason)}))
			continue
		}
		x.calls[m.Key()] = c
		forward = append(forward, m.Encode())
		x.forwarded = append(x.forwarded, m)
	}
	if len(forward) == 0 {
		status := http.StatusOK
		if limited > 0 && !batch {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(limited.Seconds()))))
			status = http.StatusTooManyRequests
		}
		writeRPC(w, status, x.joined(nil))
		return nil
	}
	// What goes upstream is what was decided on: the messages re-encoded
	// from what the gateway read, never the bytes as received.
	if batch {
		body = joinArray(forward)
	} else {
		body = forward[0]
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))

	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(g.Timeout))
	defer cancel()
	if len(x.calls) > 0 {
		// Announce the coming audit row, so that a commit starting while
		// the upstream works may wait briefly for it (group commit).
		x.expect = g.app.Audit().Expect()
		defer x.expect.Cancel()
	}
	rw := &mcpWriter{w: w, x: x, limit: g.MaxResponseBytes}
	err = next.ServeHTTP(rw, r.WithContext(ctx))
	if withdrawn(ctx) {
		return x.withdrawn(w, rw.sent)
	}
	if err != nil && !rw.sent {
		return x.upstreamFailed(w, ctx, err)
	}
	return rw.finish()
}

// joinArray encodes messages as a JSON array.
func joinArray(msgs []json.RawMessage) []byte {
	b := []byte{'['}
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, m...)
	}
	return append(b, ']')
}

// checkHeaders enforces MCP 2026-07-28: Mcp-Method (and, for calls,
// Mcp-Name) must match the body, and are mandatory from that revision on.
func checkHeaders(r *http.Request, msgs []*mcp.Message, batch bool) *mcp.Error {
	method, name := r.Header.Get("Mcp-Method"), r.Header.Get("Mcp-Name")
	modern := r.Header.Get("Mcp-Protocol-Version") >= "2026-07-28"
	if method == "" && name == "" && !modern {
		return nil
	}
	mismatch := func(format string, args ...any) *mcp.Error {
		return &mcp.Error{Code: mcp.CodeHeaderMismatch, Message: "HeaderMismatch: " + fmt.Sprintf(format, args...)}
	}
	if batch {
		return mismatch("batches cannot carry Mcp-Method")
	}
	m := msgs[0]
	if m.Method == "" {
		return nil // a response from the client
	}
	if method != m.Method {
		return mismatch("Mcp-Method %q does not match the body's method %q", method, m.Method)
	}
	_, bodyName, named, _ := mcp.Target(m)
	if !named {
		if name != "" {
			return mismatch("Mcp-Name is set but %s names no item", m.Method)
		}
		return nil
	}
	decoded, err := mcp.DecodeHeaderValue(name)
	if err != nil || decoded != bodyName {
		return mismatch("Mcp-Name %q does not match the body's %q", name, bodyName)
	}
	return nil
}

func (x *exchange) rateLimit(name string) (time.Duration, bool) {
	if l := x.g.agentLimit; l != nil {
		if ok, wait := l.Allow(x.p.AgentID); !ok {
			mcpRateLimited.WithLabelValues(x.g.Server, "agent").Inc()
			return wait, false
		}
	}
	if l := x.g.itemLimit; l != nil {
		if ok, wait := l.Allow(x.p.AgentID + "|" + name); !ok {
			mcpRateLimited.WithLabelValues(x.g.Server, "item").Inc()
			return wait, false
		}
	}
	return 0, true
}

// joined returns the answer with the gateway's own errors added: an array
// for a batch, else the single message.
func (x *exchange) joined(upstream []json.RawMessage) []byte {
	all := append(upstream, x.denied...)
	if len(all) == 0 {
		return nil
	}
	if !x.batch && len(all) == 1 {
		return all[0]
	}
	return joinArray(all)
}

// auditCall records a call decision and, for forwarded calls, its
// outcome. It returns only when the row is durable.
func (x *exchange) auditCall(c *call, outcome string, upstreamStatus int, detail string) error {
	return x.g.app.auditMCPCall(x.r.Context(), mcpCallRecord{p: x.p, server: x.g.Server, action: c.action, name: c.name,
		decision: c.decision, argsSum: c.argsSum, outcome: outcome, upstreamStatus: upstreamStatus, start: c.start,
		requestID: string(c.msg.ID), sessionID: x.sessionID, detail: detail, expect: x.expect})
}

// parseMCPDirective sets up the gateway from Caddyfile tokens. Syntax:
//
//	mastio_mcp [<matcher>] <server> {
//	    max_request_bytes  <bytes>
//	    max_response_bytes <bytes>
//	    timeout            <duration>
//	    agent_rate         <calls per minute>|off
//	    item_rate          <calls per minute>|off
//	}
func parseMCPDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(MCPGateway)
	return g, g.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler.
func (g *MCPGateway) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if !d.NextArg() {
		return d.Err("mastio_mcp needs the server name used in policy resources, e.g. mastio_mcp github")
	}
	g.Server = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "max_request_bytes", "max_response_bytes":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("%s %q: want a positive number of bytes", opt, val)
			}
			if opt == "max_request_bytes" {
				g.MaxRequestBytes = n
			} else {
				g.MaxResponseBytes = n
			}
		case "timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("timeout %q: want a positive duration", val)
			}
			g.Timeout = caddy.Duration(dur)
		case "agent_rate", "item_rate":
			n := -1
			if val != "off" {
				var err error
				if n, err = strconv.Atoi(val); err != nil || n <= 0 {
					return d.Errf("%s %q: want calls per minute or off", opt, val)
				}
			}
			if opt == "agent_rate" {
				g.AgentRate = n
			} else {
				g.ItemRate = n
			}
		default:
			return d.Errf("unrecognized mastio_mcp option %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*MCPGateway)(nil)
	_ caddy.Validator             = (*MCPGateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*MCPGateway)(nil)
	_ caddyfile.Unmarshaler       = (*MCPGateway)(nil)
)
