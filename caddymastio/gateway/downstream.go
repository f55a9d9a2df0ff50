package gateway

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// downstream is one agent session of the aggregator, with upstream
// sessions of its own (opened on first use, one per server), so that
// what an upstream asks of the client (sampling, elicitation, roots) and
// tells it (log messages, resource updates) reaches this agent's client,
// and nobody else's.
type downstream struct {
	a       *Aggregator
	ss      *mcpsdk.ServerSession
	agentID string

	mu    sync.Mutex
	ups   map[string]*upstreamSession      // by server
	calls map[string]map[*callCtx]struct{} // in flight, by server
}

// callCtx is the context of an agent's request in flight to a server.
type callCtx struct{ context.Context }

type upstreamSession struct {
	fp     string
	client *mcpsdk.Client
	cs     *mcpsdk.ClientSession
	rootMu sync.Mutex
	roots  []string // the URIs of the roots given to client
}

// errNoCapability: the agent's client did not declare what an upstream
// asks of it.
var errNoCapability = errors.New("the agent's MCP client does not offer this (it did not declare the capability)")

// upstream returns the session's own session to the named server.
func (d *downstream) upstream(ctx context.Context, name string, s *mastio.Server) (*mcpsdk.ClientSession, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fp := s.Fingerprint()
	if u := d.ups[name]; u != nil && u.fp == fp {
		return u.cs, nil
	} else if u != nil {
		go u.cs.Close()
	}
	caps := &mcpsdk.ClientCapabilities{}
	opts := &mcpsdk.ClientOptions{Capabilities: caps,
		LoggingMessageHandler: func(ctx context.Context, req *mcpsdk.LoggingMessageRequest) {
			d.ss.Log(d.related(name, ctx), req.Params)
		},
		ResourceUpdatedHandler: func(ctx context.Context, req *mcpsdk.ResourceUpdatedNotificationRequest) {
			d.a.resourceUpdated(ctx, d.agentID, s.ToolPrefix(name), req.Params.URI)
		},
	}
	var downCaps *mcpsdk.ClientCapabilities
	if p := d.ss.InitializeParams(); p != nil && p.Capabilities != nil {
		downCaps = p.Capabilities
	}
	if downCaps != nil && downCaps.Sampling != nil {
		caps.Sampling = downCaps.Sampling
		opts.CreateMessageHandler = func(ctx context.Context, req *mcpsdk.CreateMessageRequest) (*mcpsdk.CreateMessageResult, error) {
			return d.ss.CreateMessage(d.related(name, ctx), req.Params)
		}
	}
	var middleware []mcpsdk.Middleware
	if downCaps != nil && downCaps.Elicitation != nil {
		caps.Elicitation = downCaps.Elicitation
		relay := func(ctx context.Context, params *mcpsdk.ElicitParams) (*mcpsdk.ElicitResult, error) {
			return relayElicitation(d.related(name, ctx), d.ss, params)
		}
		opts.ElicitationHandler = func(ctx context.Context, req *mcpsdk.ElicitRequest) (*mcpsdk.ElicitResult, error) {
			return relay(ctx, req.Params)
		}
		middleware = append(middleware, func(next mcpsdk.MethodHandler) mcpsdk.MethodHandler {
			return func(ctx context.Context, method string, req mcpsdk.Request) (mcpsdk.Result, error) {
				if r, ok := req.(*mcpsdk.ElicitRequest); ok && method == "elicitation/create" {
					return relay(ctx, r.Params) // as it came: see relayElicitation
				}
				return next(ctx, method, req)
			}
		})
	}
	roots := downCaps != nil && (downCaps.RootsV2 != nil || downCaps.Roots.ListChanged)
	if roots {
		caps.RootsV2 = &mcpsdk.RootCapabilities{ListChanged: true}
	}
	client, cs, err := d.a.pool.connect(ctx, name, s, opts, middleware...)
	if err != nil {
		return nil, err
	}
	u := &upstreamSession{fp: fp, client: client, cs: cs}
	if roots {
		d.copyRoots(ctx, u)
	}
	if r := cs.InitializeResult(); r != nil && r.Capabilities != nil && r.Capabilities.Logging != nil {
		// Everything the upstream logs comes here; the agent's own
		// level (logging/setLevel) decides what reaches it.
		cs.SetLoggingLevel(ctx, &mcpsdk.SetLoggingLevelParams{Level: "debug"})
	}
	if d.ups == nil {
		d.ups = map[string]*upstreamSession{}
	}
	d.ups[name] = u
	return cs, nil
}

// calling records a request of the agent in flight to a server until the
// returned function is called.
func (d *downstream) calling(ctx context.Context, name string) func() {
	c := &callCtx{ctx}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.calls == nil {
		d.calls = map[string]map[*callCtx]struct{}{}
	}
	if d.calls[name] == nil {
		d.calls[name] = map[*callCtx]struct{}{}
	}
	d.calls[name][c] = struct{}{}
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.calls[name], c)
	}
}

// related is the context in which to pass on what a server asks of or
// tells the agent while handling its requests: with one request of the
// agent in flight to that server, that request's (the SDK then sends it
// on the request's own stream, where a client without a standalone GET
// stream reads it); otherwise ctx (the session's GET stream).
func (d *downstream) related(name string, ctx context.Context) context.Context {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.calls[name]) != 1 {
		return ctx
	}
	for c := range d.calls[name] {
		return c.Context
	}
	return ctx
}

// copyRoots gives the upstream client the roots the agent's client
// declares (the SDK tells the upstream they changed).
func (d *downstream) copyRoots(ctx context.Context, u *upstreamSession) {
	res, err := d.ss.ListRoots(ctx, nil)
	if err != nil {
		d.a.log.Debug("listing the agent's roots", zap.Error(err))
		return
	}
	u.rootMu.Lock()
	defer u.rootMu.Unlock()
	u.client.RemoveRoots(u.roots...)
	u.roots = u.roots[:0]
	for _, r := range res.Roots {
		u.roots = append(u.roots, r.URI)
	}
	u.client.AddRoots(res.Roots...)
}

// rootsChanged passes a change of the agent's roots on to its upstream
// sessions.
func (d *downstream) rootsChanged(ctx context.Context) {
	d.mu.Lock()
	ups := slices.Collect(maps.Values(d.ups))
	d.mu.Unlock()
	for _, u := range ups {
		d.copyRoots(ctx, u)
	}
}

// close ends the upstream sessions.
func (d *downstream) close() {
	d.mu.Lock()
	ups := d.ups
	d.ups = nil
	d.mu.Unlock()
	for _, u := range ups {
		u.cs.Close()
	}
}

// The SDK checks an elicitation's schema against its own reading of the
// spec, on the client side before the handler and on the server side
// after the answer, and refuses some the spec allows (a titled
// multi-select whose items say "type": "string"). Checking is for the
// server that asks and the client that answers: the relay passes the
// request on as it came — the client middleware above skips the check,
// and the schema goes out through the sending middleware (elicitSchema)
// rather than through ServerSession.Elicit's parameters.

type elicitSchemaKey struct{}

// relayElicitation asks the agent's client what an upstream asks.
func relayElicitation(ctx context.Context, ss *mcpsdk.ServerSession, params *mcpsdk.ElicitParams) (*mcpsdk.ElicitResult, error) {
	if params == nil {
		return nil, rpcError(mcp.CodeInvalidParams, "elicitation/create needs params")
	}
	p := *params
	if p.RequestedSchema != nil {
		ctx = context.WithValue(ctx, elicitSchemaKey{}, p.RequestedSchema)
		p.RequestedSchema = nil
	}
	return ss.Elicit(ctx, &p)
}

// elicitSchema is the agent servers' sending middleware that puts a
// relayed elicitation's schema back in the request.
func elicitSchema(next mcpsdk.MethodHandler) mcpsdk.MethodHandler {
	return func(ctx context.Context, method string, req mcpsdk.Request) (mcpsdk.Result, error) {
		schema := ctx.Value(elicitSchemaKey{})
		r, ok := req.(*mcpsdk.ServerRequest[mcpsdk.Params])
		if method != "elicitation/create" || schema == nil || !ok {
			return next(ctx, method, req)
		}
		params, ok := r.Params.(*mcpsdk.ElicitParams)
		if !ok {
			return next(ctx, method, req)
		}
		p := *params
		p.RequestedSchema = schema
		return next(ctx, method, &mcpsdk.ServerRequest[mcpsdk.Params]{Session: r.Session, Params: &p, Extra: r.Extra})
	}
}
