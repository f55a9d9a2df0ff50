// Package gateway is the MCP gateway, free of Caddy: the policy filter in
// front of one MCP server's proxy (Route) and the /v1/mcp aggregator over
// every registered server (Aggregator), with the pool of upstream sessions
// the aggregator keeps. Both read every message strictly (package mcp),
// decide on it with the core's policy, audit every call before its answer
// is delivered, and forward only what they decided on, re-encoded.
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
)

// RouteSettings configure a Route; a zero field takes its default.
type RouteSettings struct {
	// Server is the upstream's name in policy resources (<server>/<name>).
	Server string
	// MaxRequestBytes (1 MiB) and MaxResponseBytes (16 MiB, for answers
	// read whole to be filtered).
	MaxRequestBytes  int64
	MaxResponseBytes int64
	// Timeout of a POST end to end (60s).
	Timeout time.Duration
	// AgentRate and ItemRate: calls per minute per agent, and per agent
	// and item (mastio.DefaultAgentRate, DefaultItemRate); -1: no limit.
	AgentRate int
	ItemRate  int
}

// Route defaults.
const (
	DefaultMaxRequestBytes  = 1 << 20
	DefaultMaxResponseBytes = 16 << 20
	DefaultRouteTimeout     = 60 * time.Second
)

// Route enforces MCP policy in front of the handler that proxies to one
// MCP server, for Streamable HTTP in every revision: JSON and SSE
// answers, Mcp-Session-Id sessions, GET streams, and the stateless
// 2026-07-28 revision whose Mcp-Method and Mcp-Name headers must agree
// with the body.
type Route struct {
	cfg RouteSettings
	m   *mastio.Mastio
	log *zap.Logger
}

// NewRoute builds the filter for one server.
func NewRoute(m *mastio.Mastio, log *zap.Logger, cfg RouteSettings) *Route {
	cfg.MaxRequestBytes = orDefault(cfg.MaxRequestBytes, DefaultMaxRequestBytes)
	cfg.MaxResponseBytes = orDefault(cfg.MaxResponseBytes, DefaultMaxResponseBytes)
	cfg.Timeout = orDefault(cfg.Timeout, DefaultRouteTimeout)
	cfg.AgentRate = mastio.CallLimit(cfg.AgentRate, mastio.DefaultAgentRate)
	cfg.ItemRate = mastio.CallLimit(cfg.ItemRate, mastio.DefaultItemRate)
	return &Route{cfg: cfg, m: m, log: log}
}

// orDefault is v, or def when v is zero.
func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Next serves a request the gateway forwards (reverse_proxy); an error
// with nothing written means the upstream could not be reached.
type Next func(http.ResponseWriter, *http.Request) error

// call is a forwarded call the gateway waits to see answered.
type call struct {
	msg      *mcp.Message
	action   string
	name     string
	decision policy.Decision
	argsSum  string
	start    time.Time
	fwd      *mastio.ForwardedCall // its mcp.forward row, once forwarded
	done     bool
}

// exchange is the state of one request through the gateway.
type exchange struct {
	g         *Route
	r         *http.Request
	p         *mastio.Principal
	calls     map[string]*call
	denied    []json.RawMessage // answers the gateway gives itself
	forwarded []*mcp.Message    // requests sent to the upstream
	batch     bool
	sessionID string
	withheld  bool // an answer was withheld: the agent's credentials were withdrawn
}

// singleHeaders may appear once: the gateway and the upstream must not
// read different values of them.
var singleHeaders = []string{"Mcp-Session-Id", "Mcp-Method", "Mcp-Name", "Mcp-Protocol-Version", "Last-Event-Id", "Content-Type"}

// ambiguousHeader returns the first header of singleHeaders r repeats.
func ambiguousHeader(r *http.Request) (string, bool) {
	for _, h := range singleHeaders {
		if len(r.Header.Values(h)) > 1 {
			return h, true
		}
	}
	return "", false
}

// Serve filters one request to the server behind next. The caller must be
// an agent: a guard in front admitted it, or Serve authenticates its
// DPoP-bound token. A session (Mcp-Session-Id) belongs to the agent that
// opened it.
func (g *Route) Serve(w http.ResponseWriter, r *http.Request, next Next) error {
	ar, ok := g.m.AuthenticateAgent(w, r)
	if !ok {
		return nil
	}
	defer ar.Done()
	r = ar.R
	x := &exchange{g: g, r: r, p: ar.Principal, calls: map[string]*call{}, sessionID: r.Header.Get("Mcp-Session-Id")}
	if h, dup := ambiguousHeader(r); dup {
		return x.refuse(w, http.StatusBadRequest, "ambiguous_header", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
			Message: fmt.Sprintf("Invalid Request: the %s header appears more than once", h)})
	}
	if x.sessionID != "" {
		owner, known := g.m.SessionOwner(g.cfg.Server, x.sessionID)
		if !known {
			// Not opened through this gateway (or before a restart): its
			// owner is unknown, so it is not honoured. 404 is what MCP
			// clients take as "session expired, initialize again".
			g.m.RefuseSession(r, g.cfg.Server, x.p.AgentID, x.p.JKT, "unknown_session")
			writeRPC(w, http.StatusNotFound, mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
				Message: "unknown MCP session: initialize a new one"}))
			return nil
		}
		if owner != x.p.AgentID {
			g.m.RefuseSession(r, g.cfg.Server, x.p.AgentID, x.p.JKT, "session_of_another_agent")
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
		rw := &answerWriter{w: w, x: x, limit: g.cfg.MaxResponseBytes}
		err := next(rw, r)
		if err != nil && !rw.sent {
			return err
		}
		return rw.finish()
	}
	return next(w, r) // DELETE ends a session; the upstream answers other methods
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
	x.g.m.AuditRefusal(x.r, "mcp.refused", x.p.AgentID, status, reason, e.Message,
		map[string]any{"server": x.g.cfg.Server, "session_id": x.sessionID})
	writeRPC(w, status, mcp.ErrorResponse(id, e))
	return nil
}

func (x *exchange) serve(w http.ResponseWriter, next Next) error {
	g, r := x.g, x.r
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxRequestBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return x.refuse(w, http.StatusRequestEntityTooLarge, "request_too_large", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
				Message: fmt.Sprintf("the request body exceeds %d bytes", g.cfg.MaxRequestBytes)})
		}
		writeRPC(w, http.StatusBadRequest, mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
			Message: "the request body could not be read"}))
		return nil
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
		c := &call{msg: m, action: action, name: name, start: time.Now(), argsSum: argsSum(mcp.Arguments(m))}
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
		c.decision = g.m.Decide(x.p.Identity, action, g.cfg.Server+"/"+name)
		if !c.decision.Allowed {
			if err := x.auditCall(c, "denied", 0, ""); err != nil {
				return err
			}
			x.denied = append(x.denied, mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeForbidden,
				Message: fmt.Sprintf("%s %q on server %q is not allowed for %s (%s)", action, name, g.cfg.Server, x.p.AgentID, c.decision.Reason)}))
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

	// Each call's mcp.forward row is committed while the upstream works;
	// its answer waits for it (see deliver).
	for _, c := range x.calls {
		if c.fwd, err = g.m.ForwardMCPCall(x.record(c)); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), g.cfg.Timeout)
	defer cancel()
	rw := &answerWriter{w: w, x: x, limit: g.cfg.MaxResponseBytes}
	err = next(rw, r.WithContext(ctx))
	if mastio.Withdrawn(ctx) {
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

// rateLimit applies the route's limits. The limiters are asked for at
// request time, once the location is open: in a deployment with Redis they
// are Redis's, shared by every instance.
func (x *exchange) rateLimit(name string) (time.Duration, bool) {
	cfg := x.g.cfg
	if cfg.AgentRate > 0 {
		l := x.g.m.Limiter("mcp|"+cfg.Server+"|agent", cfg.AgentRate, time.Minute, cfg.AgentRate)
		if ok, wait := l.Allow(x.p.AgentID); !ok {
			mcpRateLimited.WithLabelValues(x.g.cfg.Server, "agent").Inc()
			return wait, false
		}
	}
	if cfg.ItemRate > 0 {
		l := x.g.m.Limiter("mcp|"+cfg.Server+"|item", cfg.ItemRate, time.Minute, cfg.ItemRate)
		if ok, wait := l.Allow(x.p.AgentID + "|" + name); !ok {
			mcpRateLimited.WithLabelValues(x.g.cfg.Server, "item").Inc()
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

// auditCall records a call's outcome: for a forwarded call once its
// mcp.forward row is durable (its mcp.call row follows, see
// mastio.ForwardedCall.Finish), for a call refused here its mcp.call row,
// durable when it returns.
func (x *exchange) auditCall(c *call, outcome string, upstreamStatus int, detail string) error {
	if c.fwd != nil {
		return c.fwd.Finish(x.r.Context(), outcome, upstreamStatus, detail)
	}
	rec := x.record(c)
	rec.Outcome, rec.UpstreamStatus, rec.Detail = outcome, upstreamStatus, detail
	return x.g.m.AuditMCPCall(x.r.Context(), rec)
}

// record is what the audit log keeps of c, but its outcome.
func (x *exchange) record(c *call) mastio.MCPCall {
	return mastio.MCPCall{Request: x.r, Principal: x.p, Server: x.g.cfg.Server, Action: c.action, Name: c.name,
		Decision: c.decision, ArgsSHA256: c.argsSum, Start: c.start, RequestID: string(c.msg.ID), SessionID: x.sessionID}
}
