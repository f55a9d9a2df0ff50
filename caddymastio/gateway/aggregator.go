package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// Protocol versions the aggregator speaks (initialize negotiation).
var aggregatorVersions = []string{"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"}

// Aggregator is POST /v1/mcp: one MCP endpoint for every registered
// upstream server. Tools are listed as <prefix>.<tool> (the prefix is the
// server's name unless configured), filtered by policy, and each call is
// routed to its server through a pooled session with the server's own
// credentials. It is a stateless Streamable HTTP endpoint answering
// application/json, so the original Mastio SDK — which sends tools/list
// and tools/call without initialize — and standard MCP clients both work.
type Aggregator struct {
	m    *mastio.Mastio
	log  *zap.Logger
	pool *Pool
}

// NewAggregator serves the servers of m through pool.
func NewAggregator(m *mastio.Mastio, log *zap.Logger, pool *Pool) *Aggregator {
	return &Aggregator{m: m, log: log, pool: pool}
}

// ServeHTTP answers one POST of JSON-RPC messages.
func (h *Aggregator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h.serve(w, r); err != nil {
		// Only an audit row that cannot be written gets here: nothing may
		// be answered past it.
		h.log.Error("MCP aggregator request failed", zap.Error(err))
		httpjson.Error(w, http.StatusServiceUnavailable, "audit_unavailable", "the audit log cannot be written; nothing was delivered")
	}
}

func (h *Aggregator) serve(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeRPC(w, http.StatusMethodNotAllowed, mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
			Message: "this endpoint is stateless: POST JSON-RPC messages (no GET stream, no session to delete)"}))
		return nil
	}
	ar, ok := h.m.AuthenticateAgent(w, r)
	if !ok {
		return nil
	}
	defer ar.Done()
	r, p := ar.R, ar.Principal
	refuse := func(status int, reason string, id json.RawMessage, e *mcp.Error) error {
		h.m.AuditRefusal(r, "mcp.refused", p.AgentID, status, reason, e.Message, map[string]any{"server": "aggregator"})
		writeRPC(w, status, mcp.ErrorResponse(id, e))
		return nil
	}
	if hdr, dup := ambiguousHeader(r); dup {
		return refuse(http.StatusBadRequest, "ambiguous_header", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
			Message: fmt.Sprintf("Invalid Request: the %s header appears more than once", hdr)})
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		return refuse(http.StatusRequestEntityTooLarge, "request_too_large", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
			Message: "the request body exceeds 1048576 bytes"})
	}
	msgs, batch, perr := mcp.ParseBody(body)
	if perr != nil {
		return refuse(http.StatusBadRequest, "invalid_message", nil, perr)
	}
	if herr := checkHeaders(r, msgs, batch); herr != nil {
		return refuse(http.StatusBadRequest, "header_mismatch", msgs[0].ID, herr)
	}
	var answers []json.RawMessage
	limited, withheld := time.Duration(0), false
	for _, m := range msgs {
		if !m.IsRequest() {
			continue
		}
		a, wait, err := h.aggregate(r, p, m)
		if err != nil {
			return err
		}
		limited = max(limited, wait)
		if a == nil { // withheld: the agent's credentials were withdrawn
			withheld = true
			continue
		}
		answers = append(answers, a)
	}
	if withheld {
		writeRPC(w, http.StatusUnauthorized, mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeForbidden,
			Message: "the agent " + p.AgentID + " was revoked (or its certificate rotated out) before the answer: nothing was delivered"}))
		return nil
	}
	if len(answers) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return nil
	}
	out := answers[0]
	if batch {
		out, _ = json.Marshal(answers)
	}
	status := http.StatusOK
	if limited > 0 && !batch {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(limited.Seconds()))))
		status = http.StatusTooManyRequests
	}
	writeRPC(w, status, out)
	return nil
}

// aggregate answers one request.
func (h *Aggregator) aggregate(r *http.Request, p *mastio.Principal, m *mcp.Message) (json.RawMessage, time.Duration, error) {
	switch m.Method {
	case "initialize":
		var params struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		json.Unmarshal(m.Params, &params) // m was read strictly: unique, case-exact members
		version := aggregatorVersions[0]
		for _, v := range aggregatorVersions {
			if v == params.ProtocolVersion {
				version = v
			}
		}
		return mcp.Result(m.ID, map[string]any{
			"protocolVersion": version,
			"capabilities":    map[string]any{"tools": map[string]any{"listChanged": false}},
			"serverInfo":      map[string]any{"name": "caddy-mastio", "version": mastio.Version()},
			"instructions":    "Tools of the organisation's MCP servers, named <server>.<tool>; calls are checked against policy and audited.",
		}), 0, nil
	case "ping":
		return mcp.Result(m.ID, map[string]any{}), 0, nil
	case "tools/list":
		return h.aggregateTools(r, p, m), 0, nil
	case "prompts/list":
		return mcp.Result(m.ID, map[string]any{"prompts": []any{}}), 0, nil
	case "resources/list":
		return mcp.Result(m.ID, map[string]any{"resources": []any{}}), 0, nil
	case "resources/templates/list":
		return mcp.Result(m.ID, map[string]any{"resourceTemplates": []any{}}), 0, nil
	case "tools/call":
		return h.aggregateCall(r, p, m)
	}
	return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeMethodNotFound, Message: "Method not found: " + m.Method}), 0, nil
}

// aggregateTools lists the tools the agent may call on every server. A
// server that cannot be reached is left out (and logged), so one broken
// upstream does not hide the others.
func (h *Aggregator) aggregateTools(r *http.Request, p *mastio.Principal, m *mcp.Message) json.RawMessage {
	servers, _, err := h.m.Servers(r.Context())
	if err != nil {
		return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeInternal, Message: "the server registry cannot be read"})
	}
	names := make([]string, 0, len(servers))
	for n := range servers {
		names = append(names, n)
	}
	sort.Strings(names)
	tools := []json.RawMessage{}
	for _, name := range names {
		s := servers[name]
		list, err := h.pool.tools(r.Context(), name, s)
		if err != nil {
			h.log.Warn("MCP server left out of the tool list", zap.String("server", name), zap.Error(err))
			continue
		}
		for _, t := range list {
			if !h.m.Decide(p.Identity, "tools/call", name+"/"+t.Name).Allowed {
				continue
			}
			raw, _ := json.Marshal(t)
			var obj map[string]json.RawMessage
			json.Unmarshal(raw, &obj)
			obj["name"], _ = json.Marshal(s.ToolPrefix(name) + "." + t.Name)
			raw, _ = json.Marshal(obj)
			tools = append(tools, raw)
		}
	}
	return mcp.Result(m.ID, map[string]any{"tools": tools})
}

// aggregateCall routes a tools/call to its server after policy and rate
// limits, and audits it before answering.
func (h *Aggregator) aggregateCall(r *http.Request, p *mastio.Principal, m *mcp.Message) (json.RawMessage, time.Duration, error) {
	_, full, _, terr := mcp.Target(m)
	if terr != nil {
		return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeInvalidParams, Message: "Invalid params: " + terr.Error()}), 0, nil
	}
	servers, _, err := h.m.Servers(r.Context())
	if err != nil {
		return nil, 0, err
	}
	var server, tool string
	var s *mastio.Server
	for name, cand := range servers { // the longest matching prefix wins
		if pre := cand.ToolPrefix(name) + "."; strings.HasPrefix(full, pre) && len(pre) > len(server) {
			server, tool, s = name, strings.TrimPrefix(full, pre), cand
		}
	}
	if s == nil || tool == "" {
		return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeInvalidParams,
			Message: fmt.Sprintf("Unknown tool %q: tools are named <server>.<tool> (see tools/list)", full)}), 0, nil
	}
	args := mcp.Arguments(m)
	rec := mastio.MCPCall{Principal: p, Server: server, Action: "tools/call", Name: tool, Start: time.Now(), RequestID: string(m.ID),
		ArgsSHA256: argumentsSum(m)}
	if int64(len(args)) > s.MaxArgs() {
		rec.Outcome, rec.Decision = "denied", policy.Decision{Reason: "arguments too large"}
		if err := h.m.AuditMCPCall(r.Context(), rec); err != nil {
			return nil, 0, err
		}
		return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeInvalidParams,
			Message: fmt.Sprintf("the arguments exceed %d bytes", s.MaxArgs())}), 0, nil
	}
	agentRate, itemRate := s.Rates()
	for _, lim := range []struct {
		scope, key string
		rate       int
	}{{"agent", p.AgentID, agentRate}, {"item", p.AgentID + "\x00" + tool, itemRate}} {
		if lim.rate == 0 {
			continue
		}
		l := h.m.Limiter("mcp|aggregate|"+server+"|"+lim.scope, lim.rate, time.Minute, lim.rate)
		if ok, wait := l.Allow(lim.key); !ok {
			mcpRateLimited.WithLabelValues(server, lim.scope).Inc()
			rec.Outcome, rec.Decision = "rate_limited", policy.Decision{Reason: "rate limited (" + lim.scope + ")"}
			if err := h.m.AuditMCPCall(r.Context(), rec); err != nil {
				return nil, 0, err
			}
			msg := fmt.Sprintf("rate limit exceeded: at most %d calls a minute on %s per agent", lim.rate, server)
			if lim.scope == "item" {
				msg = fmt.Sprintf("rate limit exceeded: at most %d calls a minute of %s per agent", lim.rate, full)
			}
			return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeRateLimited, Message: msg}), wait, nil
		}
	}
	rec.Decision = h.m.Decide(p.Identity, "tools/call", server+"/"+tool)
	if !rec.Decision.Allowed {
		mcpCalls.WithLabelValues(server, "deny").Inc()
		rec.Outcome = "denied"
		if err := h.m.AuditMCPCall(r.Context(), rec); err != nil {
			return nil, 0, err
		}
		return mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeForbidden,
			Message: fmt.Sprintf("tools/call %q is not allowed for %s (%s)", full, p.AgentID, rec.Decision.Reason)}), 0, nil
	}
	mcpCalls.WithLabelValues(server, "allow").Inc()
	rec.Expect = h.m.Audit().Expect() // the row below; a commit meanwhile may wait for it
	defer rec.Expect.Cancel()
	res, status, cerr := h.callUpstream(r.Context(), server, s, tool, args)
	rec.UpstreamStatus = status
	var answer json.RawMessage
	switch {
	case cerr == nil:
		rec.Outcome = "ok"
		if res.IsError {
			rec.Outcome = "tool_error"
		}
		answer = mcp.Result(m.ID, res)
	case isRPCError(cerr):
		rec.Outcome, rec.Detail = "error", cerr.Error()
		answer = mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeUpstream, Message: "the MCP server " + server + " answered with an error: " + cerr.Error()})
	default:
		rec.Outcome, rec.Detail = "upstream_error", cerr.Error()
		msg := "the MCP server " + server + " is unavailable"
		if errors.Is(cerr, context.DeadlineExceeded) {
			msg = fmt.Sprintf("the MCP server %s did not answer within %s", server, s.CallTimeout())
		}
		answer = mcp.ErrorResponse(m.ID, &mcp.Error{Code: mcp.CodeUpstream, Message: msg})
	}
	delivered, err := h.m.Registry().Deliver(p.Credential(), func() error { return h.m.AuditMCPCall(r.Context(), rec) })
	if err != nil {
		return nil, 0, err
	}
	if !delivered {
		rec.Outcome, rec.Detail = "agent_revoked", "answered after the agent's credentials were withdrawn; not delivered"
		if err := h.m.AuditMCPCall(r.Context(), rec); err != nil {
			return nil, 0, err
		}
		return nil, 0, nil
	}
	return answer, 0, nil
}

// isRPCError reports an error the upstream answered (a JSON-RPC error),
// as opposed to a transport failure.
func isRPCError(err error) bool {
	var we *jsonrpc.Error
	return errors.As(err, &we)
}

// callUpstream calls the tool through the pooled session, reconnecting
// once if the session broke.
func (h *Aggregator) callUpstream(ctx context.Context, name string, s *mastio.Server, tool string, args json.RawMessage) (*mcpsdk.CallToolResult, int, error) {
	var arguments any = map[string]any{}
	if len(args) > 0 {
		arguments = args
	}
	for attempt := 0; ; attempt++ {
		c, err := h.pool.session(ctx, name, s)
		if err != nil {
			return nil, http.StatusBadGateway, err
		}
		cctx, cancel := context.WithTimeout(ctx, s.CallTimeout())
		res, err := c.session.CallTool(cctx, &mcpsdk.CallToolParams{Name: tool, Arguments: arguments})
		cancel()
		if err == nil {
			return res, http.StatusOK, nil
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, http.StatusGatewayTimeout, err
		}
		if isRPCError(err) {
			return nil, http.StatusOK, err
		}
		h.pool.drop(name)
		if attempt > 0 {
			return nil, http.StatusBadGateway, err
		}
	}
}
