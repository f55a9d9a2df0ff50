package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// agentServer is the aggregator as one agent sees it: an MCP server (the
// official Go SDK's) offering the items of every upstream that the policy
// lets the agent use, under their visible names. The agent's sessions
// share it. sync keeps it in step with the upstreams and the policy; the
// SDK tells connected clients when a list changed.
type agentServer struct {
	a       *Aggregator
	agentID string
	server  *mcpsdk.Server

	gen atomic.Uint64 // counts invalidations

	mu        sync.Mutex // held while the sets and the server change
	syncedGen uint64     // gen when the sets were last made from every catalog
	syncedAt  time.Time
	offered   itemSet // registered with server
	denied    itemSet // existing items the policy withholds: calls to them are refused and audited
}

// item is an upstream item as an agent sees it.
type item struct {
	server string
	prefix string
	name   string // the original name, URI or URI template
	digest [32]byte
}

// visible is the name (or URI) the agent knows the item by.
func (it item) visible(action string) string {
	if action == actionResource {
		return visibleURI(it.prefix, it.name)
	}
	return visibleName(it.prefix, it.name)
}

// itemSet holds items by kind, by visible name (or URI).
type itemSet struct {
	tools, prompts, resources, templates map[string]item
}

func newItemSet() itemSet {
	return itemSet{tools: map[string]item{}, prompts: map[string]item{}, resources: map[string]item{}, templates: map[string]item{}}
}

// Actions of the policy for each kind of item.
const (
	actionTool     = "tools/call"
	actionPrompt   = "prompts/get"
	actionResource = "resources/read"
)

func newAgentServer(a *Aggregator, agentID string) *agentServer {
	as := &agentServer{a: a, agentID: agentID, offered: newItemSet(), denied: newItemSet()}
	as.gen.Store(1)
	as.server = mcpsdk.NewServer(&mcpsdk.Implementation{Name: "caddy-mastio", Version: mastio.Version()}, &mcpsdk.ServerOptions{
		Instructions: "The organisation's MCP servers through its Mastio: tools and prompts are named <server>.<name>, " +
			"resources take the URI scheme mastio-<server>+<scheme>; every use is checked against policy and audited.",
		HasTools: true, HasPrompts: true, HasResources: true,
		CompletionHandler:       as.complete,
		SubscribeHandler:        as.subscribe,
		UnsubscribeHandler:      as.unsubscribe,
		InitializedHandler:      func(_ context.Context, req *mcpsdk.InitializedRequest) { a.sessionStarted(req.Session, agentID) },
		RootsListChangedHandler: func(ctx context.Context, req *mcpsdk.RootsListChangedRequest) { a.rootsChanged(ctx, req.Session) },
		GetSessionID: func() string {
			sid := randomID()
			a.m.BindSession(context.Background(), aggregatorSessions, sid, agentID)
			return sid
		},
	})
	as.server.AddReceivingMiddleware(as.middleware)
	as.server.AddSendingMiddleware(elicitSchema)
	return as
}

// middleware brings the server up to date before a list is read, and
// refuses (audited) a use of an item the policy withholds, which the SDK
// would answer as unknown.
func (as *agentServer) middleware(next mcpsdk.MethodHandler) mcpsdk.MethodHandler {
	return func(ctx context.Context, method string, req mcpsdk.Request) (mcpsdk.Result, error) {
		switch method {
		case "tools/list", "prompts/list", "resources/list", "resources/templates/list":
			as.sync(ctx, true)
		case "tools/call":
			if p, ok := req.GetParams().(*mcpsdk.CallToolParamsRaw); ok {
				as.know(ctx, func(s *itemSet) bool { _, ok := s.tools[p.Name]; return ok })
				if it, denied := as.withheld(func(s *itemSet) map[string]item { return s.tools }, p.Name); denied {
					return nil, as.a.refuse(ctx, req.GetSession(), as.agentID, it, actionTool, argsSum(p.Arguments))
				}
			}
		case "prompts/get":
			if p, ok := req.GetParams().(*mcpsdk.GetPromptParams); ok {
				as.know(ctx, func(s *itemSet) bool { _, ok := s.prompts[p.Name]; return ok })
				if it, denied := as.withheld(func(s *itemSet) map[string]item { return s.prompts }, p.Name); denied {
					return nil, as.a.refuse(ctx, req.GetSession(), as.agentID, it, actionPrompt, "")
				}
			}
		case "resources/read":
			if p, ok := req.GetParams().(*mcpsdk.ReadResourceParams); ok {
				as.know(ctx, func(s *itemSet) bool { return s.hasURI(p.URI) })
				if it, denied := as.withheldURI(p.URI); denied {
					return nil, as.a.refuse(ctx, req.GetSession(), as.agentID, it, actionResource, "")
				}
			}
		}
		return next(ctx, method, req)
	}
}

// withheld finds an item of the kind pick chooses that the policy
// withholds from the agent.
func (as *agentServer) withheld(pick func(*itemSet) map[string]item, name string) (item, bool) {
	as.mu.Lock()
	defer as.mu.Unlock()
	it, ok := pick(&as.denied)[name]
	return it, ok
}

// withheldURI finds a resource URI the policy withholds: a listed one, or
// one of a withheld server's URI space that no offered template covers.
func (as *agentServer) withheldURI(uri string) (item, bool) {
	as.mu.Lock()
	defer as.mu.Unlock()
	if it, ok := as.denied.resources[uri]; ok {
		return it, true
	}
	if _, ok := as.offered.resources[uri]; ok {
		return item{}, false
	}
	// A URI a template would produce: decided on the URI itself.
	for _, templates := range []map[string]item{as.offered.templates, as.denied.templates} {
		for _, it := range templates {
			if orig, ok := originalURI(it.prefix, uri); ok && it.prefix != "" {
				if !as.a.allowed(as.agentID, actionResource, it.server, orig) {
					return item{server: it.server, prefix: it.prefix, name: orig}, true
				}
				return item{}, false
			}
		}
	}
	return item{}, false
}

// hasURI reports whether the set holds the resource, or a template of a
// server whose URIs look like it.
func (s *itemSet) hasURI(uri string) bool {
	if _, ok := s.resources[uri]; ok {
		return true
	}
	for _, it := range s.templates {
		if _, ok := originalURI(it.prefix, uri); ok {
			return true
		}
	}
	return false
}

// invalidate makes the next use list the upstreams again.
func (as *agentServer) invalidate() { as.gen.Add(1) }

// know brings the sets up to date, waiting for the upstreams if known
// does not find the item there (the agent may name an item of a server
// not listed yet).
func (as *agentServer) know(ctx context.Context, known func(*itemSet) bool) {
	as.mu.Lock()
	found := known(&as.offered) || known(&as.denied)
	as.mu.Unlock()
	if !found {
		as.sync(ctx, true)
	}
}

// sync brings the offered items in line with the upstreams' catalogs and
// the policy, when they may have changed or catalogTTL has passed. When
// wait, it lists the upstreams as needed; otherwise it uses the catalogs
// known (a server never listed keeps what it offered, and the next sync
// tries again), so that a slow server does not hold up the uses of the
// others.
func (as *agentServer) sync(ctx context.Context, wait bool) {
	gen := as.gen.Load()
	as.mu.Lock()
	current := as.syncedGen == gen && time.Since(as.syncedAt) < catalogTTL
	as.mu.Unlock()
	if current {
		return
	}
	id, active := as.a.m.Registry().Lookup(as.agentID)
	servers, _, err := as.a.m.Servers(ctx)
	if err != nil {
		as.a.log.Error("reading the MCP server registry", zap.Error(err))
		return // keep what is offered; try again next time
	}
	cats, errs := as.a.pool.catalogs(ctx, servers, wait)
	for name, err := range errs {
		as.a.log.Warn("MCP server left out of the aggregator", zap.String("server", name), zap.Error(err))
	}
	names := make([]string, 0, len(servers))
	for n := range servers {
		names = append(names, n)
	}
	sort.Strings(names)

	as.mu.Lock()
	defer as.mu.Unlock()
	offer, deny := newItemSet(), newItemSet()
	complete := true
	for _, name := range names {
		if !active {
			break
		}
		cat := cats[name]
		if cat == nil {
			if !wait && errs[name] == nil {
				complete = false
				offer.keep(as.offered, name)
				deny.keep(as.denied, name)
			}
			continue
		}
		prefix := servers[name].ToolPrefix(name)
		place := func(kind string, offered, denied map[string]item, visible, original string, v any) {
			if _, taken := offered[visible]; taken {
				return // another server's item has the name (prefix "-"): the first server keeps it
			}
			if _, taken := denied[visible]; taken {
				return
			}
			raw, _ := json.Marshal(v)
			it := item{server: name, prefix: prefix, name: original, digest: sha256.Sum256(raw)}
			if as.a.decide(id, kind, name, original).Allowed {
				offered[visible] = it
			} else {
				denied[visible] = it
			}
		}
		for _, t := range cat.tools {
			place(actionTool, offer.tools, deny.tools, visibleName(prefix, t.Name), t.Name, t)
		}
		for _, p := range cat.prompts {
			place(actionPrompt, offer.prompts, deny.prompts, visibleName(prefix, p.Name), p.Name, p)
		}
		for _, r := range cat.resources {
			place(actionResource, offer.resources, deny.resources, visibleURI(prefix, r.URI), r.URI, r)
		}
		for _, t := range cat.templates {
			place(actionResource, offer.templates, deny.templates, visibleURI(prefix, t.URITemplate), t.URITemplate, t)
		}
	}
	as.apply(cats, offer)
	as.offered, as.denied = offer, deny
	if complete {
		as.syncedGen, as.syncedAt = gen, time.Now()
	}
}

// keep copies the items of server from old.
func (s itemSet) keep(old itemSet, server string) {
	for _, pair := range [][2]map[string]item{{s.tools, old.tools}, {s.prompts, old.prompts},
		{s.resources, old.resources}, {s.templates, old.templates}} {
		for v, it := range pair[1] {
			if _, taken := pair[0][v]; it.server == server && !taken {
				pair[0][v] = it
			}
		}
	}
}

// removed is the visible names of old that now is without or holds
// changed.
func removed(old, now map[string]item) []string {
	var gone []string
	for v, it := range old {
		if n, ok := now[v]; !ok || n.digest != it.digest {
			gone = append(gone, v)
		}
	}
	return gone
}

// added is the items of now that old does not hold as they are.
func added(old, now map[string]item) map[string]item {
	out := map[string]item{}
	for v, it := range now {
		if o, ok := old[v]; !ok || o.digest != it.digest {
			out[v] = it
		}
	}
	return out
}

// find returns a copy of the first element of list that match accepts.
func find[T any](list []*T, match func(*T) bool) *T {
	for _, v := range list {
		if match(v) {
			c := *v
			return &c
		}
	}
	return nil
}

// apply registers what is newly offered (or changed), as the upstream
// describes it under its visible name, and removes what no longer is.
// Items kept from an unlisted server are already registered.
func (as *agentServer) apply(cats map[string]*catalog, offer itemSet) {
	as.server.RemoveTools(removed(as.offered.tools, offer.tools)...)
	as.server.RemovePrompts(removed(as.offered.prompts, offer.prompts)...)
	as.server.RemoveResources(removed(as.offered.resources, offer.resources)...)
	as.server.RemoveResourceTemplates(removed(as.offered.templates, offer.templates)...)
	for v, it := range added(as.offered.tools, offer.tools) {
		if cat := cats[it.server]; cat != nil {
			if t := find(cat.tools, func(t *mcpsdk.Tool) bool { return t.Name == it.name }); t != nil {
				t.Name = v
				as.server.AddTool(t, as.callTool(it))
			}
		}
	}
	for v, it := range added(as.offered.prompts, offer.prompts) {
		if cat := cats[it.server]; cat != nil {
			if p := find(cat.prompts, func(p *mcpsdk.Prompt) bool { return p.Name == it.name }); p != nil {
				p.Name = v
				as.server.AddPrompt(p, as.getPrompt(it))
			}
		}
	}
	for v, it := range added(as.offered.resources, offer.resources) {
		if cat := cats[it.server]; cat != nil {
			if r := find(cat.resources, func(r *mcpsdk.Resource) bool { return r.URI == it.name }); r != nil {
				r.URI = v
				as.server.AddResource(r, as.readResource(it))
			}
		}
	}
	for v, it := range added(as.offered.templates, offer.templates) {
		if cat := cats[it.server]; cat != nil {
			if t := find(cat.templates, func(t *mcpsdk.ResourceTemplate) bool { return t.URITemplate == it.name }); t != nil {
				t.URITemplate = v
				as.server.AddResourceTemplate(t, as.readResource(it))
			}
		}
	}
}
