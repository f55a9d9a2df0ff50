package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sync"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// Aggregator is /v1/mcp: one MCP endpoint for every registered upstream
// server. Each agent sees an MCP server of its own (the official Go SDK's,
// see agentServer) offering the tools, prompts, resources and resource
// templates the policy lets it use, under names that say which server
// they come from, with argument completion, resource subscriptions, and
// what the upstreams ask of the client (sampling, elicitation, roots) or
// tell it (progress, log messages) relayed to the agent's own session.
// Every use is decided, limited and audited before it is answered.
//
// Sessions (Mcp-Session-Id, after initialize) belong to the agent that
// opened them. A request without a session that is not an initialize —
// the original Mastio SDK sends tools/list and tools/call so — and the
// sessionless revision 2026-07-28 are served statelessly, answered in
// JSON, with no server-to-client requests.
type Aggregator struct {
	m         *mastio.Mastio
	log       *zap.Logger
	pool      *Pool
	stateful  *mcpsdk.StreamableHTTPHandler
	stateless *mcpsdk.StreamableHTTPHandler
	unwatch   []func()

	mu       sync.Mutex
	agents   map[string]*agentServer
	sessions map[*mcpsdk.ServerSession]*downstream
}

// aggregatorSessions names the aggregator's sessions in the core's table
// of session owners.
const aggregatorSessions = "mastio/aggregator"

// jktHeader carries the caller's DPoP key to the audit rows; a header of
// this name from a client is removed with the other X-Mastio-* headers
// when the caller is admitted.
const jktHeader = "X-Mastio-Jkt"

// maxAggregatorBody bounds a request to the aggregator.
const maxAggregatorBody = 1 << 20

// NewAggregator serves the servers of m through pool. Close releases it.
func NewAggregator(m *mastio.Mastio, log *zap.Logger, pool *Pool) *Aggregator {
	a := &Aggregator{m: m, log: log, pool: pool, agents: map[string]*agentServer{}, sessions: map[*mcpsdk.ServerSession]*downstream{}}
	// Caddy in front checks hosts; the Mastio authenticates every request.
	a.stateful = mcpsdk.NewStreamableHTTPHandler(a.serverFor, &mcpsdk.StreamableHTTPOptions{DisableLocalhostProtection: true})
	a.stateless = mcpsdk.NewStreamableHTTPHandler(a.serverFor,
		&mcpsdk.StreamableHTTPOptions{Stateless: true, JSONResponse: true, DisableLocalhostProtection: true})
	a.unwatch = append(a.unwatch, pool.OnChange(a.invalidate), m.OnPolicyChange(a.invalidate), m.OnAgentChange(a.agentChanged))
	return a
}

// Close ends the agents' sessions and their upstream sessions.
func (a *Aggregator) Close() {
	for _, fn := range a.unwatch {
		fn()
	}
	a.mu.Lock()
	sessions := a.sessions
	a.sessions = map[*mcpsdk.ServerSession]*downstream{}
	a.mu.Unlock()
	for ss, d := range sessions {
		ss.Close()
		d.close()
	}
}

// ServeHTTP authenticates the agent, reads a POST strictly (refusing, with
// an audit row, what an SDK could read otherwise than the gateway), checks
// that a session is the agent's, and serves the request.
func (a *Aggregator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ar, ok := a.m.AuthenticateAgent(w, r)
	if !ok {
		return
	}
	defer ar.Done()
	r, p := ar.R, ar.Principal
	refuse := func(status int, reason string, id json.RawMessage, e *mcp.Error) {
		a.m.AuditRefusal(r, "mcp.refused", p.AgentID, status, reason, e.Message, map[string]any{"server": "aggregator"})
		writeRPC(w, status, mcp.ErrorResponse(id, e))
	}
	if hdr, dup := ambiguousHeader(r); dup {
		refuse(http.StatusBadRequest, "ambiguous_header", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
			Message: fmt.Sprintf("Invalid Request: the %s header appears more than once", hdr)})
		return
	}
	sid := r.Header.Get("Mcp-Session-Id")
	if owner, known := a.m.SessionOwner(aggregatorSessions, sid); sid != "" && known && owner != p.AgentID {
		a.m.RefuseSession(r, aggregatorSessions, p.AgentID, p.JKT, "session_of_another_agent")
		refuse(http.StatusForbidden, "session_of_another_agent", nil, &mcp.Error{Code: mcp.CodeForbidden,
			Message: "this MCP session belongs to another agent"})
		return
	}
	initialize := false
	if r.Method == http.MethodPost {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAggregatorBody))
		if err != nil {
			refuse(http.StatusRequestEntityTooLarge, "request_too_large", nil, &mcp.Error{Code: mcp.CodeInvalidRequest,
				Message: fmt.Sprintf("the request body exceeds %d bytes", maxAggregatorBody)})
			return
		}
		msgs, batch, perr := mcp.ParseBody(body)
		if perr != nil {
			refuse(http.StatusBadRequest, "invalid_message", nil, perr)
			return
		}
		if herr := checkHeaders(r, msgs, batch); herr != nil {
			refuse(http.StatusBadRequest, "header_mismatch", msgs[0].ID, herr)
			return
		}
		initialize = !batch && msgs[0].Method == "initialize"
		// The SDK reads the same bytes: strictly read, they hold no member
		// twice and none in another case, so it reads what was checked.
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.Header.Set(jktHeader, p.JKT)
	if r.Header.Get("Mcp-Protocol-Version") >= "2026-07-28" || (r.Method == http.MethodPost && sid == "" && !initialize) {
		if r.Method != http.MethodPost {
			a.stateless.ServeHTTP(w, r)
			return
		}
		lw := &limitStatusWriter{ResponseWriter: w}
		a.stateless.ServeHTTP(lw, r)
		lw.finish()
		return
	}
	a.stateful.ServeHTTP(w, r)
}

// serverFor is the agent's server (the SDK asks for it on every request).
func (a *Aggregator) serverFor(r *http.Request) *mcpsdk.Server {
	p := mastio.PrincipalFrom(r)
	if p == nil {
		return nil // not reached: ServeHTTP admitted the agent
	}
	a.mu.Lock()
	as := a.agents[p.AgentID]
	if as == nil {
		as = newAgentServer(a, p.AgentID)
		a.agents[p.AgentID] = as
	}
	a.mu.Unlock()
	as.sync(r.Context(), false)
	return as.server
}

// invalidate makes every agent server list the upstreams again: a
// catalog, the server registry or the policy changed.
func (a *Aggregator) invalidate() {
	a.mu.Lock()
	agents := slices.Collect(maps.Values(a.agents))
	a.mu.Unlock()
	for _, as := range agents {
		as.invalidate()
		go as.sync(context.Background(), true) // connected clients hear of the change
	}
}

// agentChanged ends the sessions of an agent whose credentials were
// withdrawn (its next request is refused anyway).
func (a *Aggregator) agentChanged(agentID string) {
	if _, active := a.m.Registry().Lookup(agentID); active {
		return
	}
	a.mu.Lock()
	var ended []*mcpsdk.ServerSession
	for ss, d := range a.sessions {
		if d.agentID == agentID {
			ended = append(ended, ss)
		}
	}
	delete(a.agents, agentID)
	a.mu.Unlock()
	for _, ss := range ended {
		ss.Close()
	}
}

// sessionStarted records an agent's new session; its upstream sessions
// end with it.
func (a *Aggregator) sessionStarted(ss *mcpsdk.ServerSession, agentID string) {
	d := &downstream{a: a, ss: ss, agentID: agentID}
	a.mu.Lock()
	a.sessions[ss] = d
	a.mu.Unlock()
	go func() {
		ss.Wait()
		a.mu.Lock()
		delete(a.sessions, ss)
		a.mu.Unlock()
		d.close()
	}()
}

// sessionOf is the session's state, or nil for a stateless request.
func (a *Aggregator) sessionOf(ss *mcpsdk.ServerSession) *downstream {
	if ss == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sessions[ss]
}

// upstreamFor is the session to use for a call: the agent session's own,
// or the pool's for a stateless request.
func (a *Aggregator) upstreamFor(ctx context.Context, ss *mcpsdk.ServerSession, name string, s *mastio.Server) (*mcpsdk.ClientSession, error) {
	if d := a.sessionOf(ss); d != nil {
		return d.upstream(ctx, name, s)
	}
	return a.pool.session(ctx, name, s)
}

func (a *Aggregator) rootsChanged(ctx context.Context, ss *mcpsdk.ServerSession) {
	if d := a.sessionOf(ss); d != nil {
		d.rootsChanged(ctx)
	}
}

// resourceUpdated tells the agent's subscribed sessions that an upstream
// resource changed.
func (a *Aggregator) resourceUpdated(ctx context.Context, agentID, prefix, uri string) {
	a.mu.Lock()
	as := a.agents[agentID]
	a.mu.Unlock()
	if as != nil {
		as.server.ResourceUpdated(ctx, &mcpsdk.ResourceUpdatedNotificationParams{URI: visibleURI(prefix, uri)})
	}
}

// randomID is a session id: 24 random bytes.
func randomID() string {
	b := make([]byte, 24)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}
