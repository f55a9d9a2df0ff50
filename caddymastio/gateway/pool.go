package gateway

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/watch"
)

// Pool holds one MCP client session (of the official Go SDK) per upstream
// server, shared by the aggregator's stateless requests — the upstream
// sees the gateway, with the server's own credentials — reconnected when
// the settings change or the session breaks, and each server's catalog
// (tools, prompts, resources, templates), refreshed when the server says
// a list changed and at most every catalogTTL otherwise. mu guards the
// map only: connecting to one server (up to 10 s) holds that server's
// entry, not the pool.
type Pool struct {
	m        *mastio.Mastio
	resolve  func(string) string
	unwatch  func()
	progress progressRouter

	watchers watch.Set[struct{}]

	mu       sync.Mutex
	conns    map[string]*upstreamConn
	tokens   map[string]*oauthTokens // by server name
	counters map[*mcpsdk.ClientSession]*messageCounter
}

type upstreamConn struct {
	fp string

	mu      sync.Mutex // held while connecting and listing
	session *mcpsdk.ClientSession
	// catalog is the last listing, read without mu (see cachedCatalog).
	catalog atomic.Pointer[catalog]
	// stale is set when the server says a list changed. It is not guarded
	// by mu: the SDK calls the handlers that set it while a listing may
	// hold mu and wait for the same connection.
	stale      atomic.Bool
	refreshing atomic.Bool // a listing in the background is under way
}

// catalogTTL bounds how old a server's catalog may be when it is used.
const catalogTTL = 30 * time.Second

// NewPool returns an empty pool; resolve expands placeholders in the
// servers' header values when requests are made. Close releases it.
func NewPool(m *mastio.Mastio, resolve func(string) string) *Pool {
	p := &Pool{m: m, resolve: resolve, conns: map[string]*upstreamConn{}, counters: map[*mcpsdk.ClientSession]*messageCounter{}}
	p.unwatch = m.OnServerChange(func(name string) {
		p.drop(name)
		p.changed()
	})
	return p
}

// OnChange registers fn, called when a catalog may have changed (a server
// said so, was added, replaced or removed); remove unregisters it.
func (p *Pool) OnChange(fn func()) (remove func()) { return p.watchers.Add(func(struct{}) { fn() }) }

func (p *Pool) changed() { p.watchers.Notify(struct{}{}) }

// drop forgets the server's session (broken, or the server was removed);
// the next use connects again.
func (p *Pool) drop(name string) {
	p.mu.Lock()
	c := p.conns[name]
	delete(p.conns, name)
	p.mu.Unlock()
	if c != nil {
		go c.close() // closing may talk to the server; nobody waits for it
	}
}

// Close closes every session.
func (p *Pool) Close() {
	p.unwatch()
	p.mu.Lock()
	conns := p.conns
	p.conns = map[string]*upstreamConn{}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

func (c *upstreamConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != nil {
		c.session.Close()
	}
}

// connect opens a client session to the named server with the server's
// credentials. opts are the client's (its handlers), middleware its
// receiving middleware; the progress of the calls it makes reaches the
// router.
func (p *Pool) connect(ctx context.Context, name string, s *mastio.Server, opts *mcpsdk.ClientOptions,
	middleware ...mcpsdk.Middleware) (*mcpsdk.Client, *mcpsdk.ClientSession, error) {
	if opts == nil {
		opts = &mcpsdk.ClientOptions{}
	}
	opts.ProgressNotificationHandler = func(_ context.Context, req *mcpsdk.ProgressNotificationClientRequest) {
		p.progress.relay(req.Params)
	}
	transport, err := p.newTransport(name, s)
	if err != nil {
		return nil, nil, err
	}
	transport.counter = newMessageCounter()
	httpClient := &http.Client{Transport: transport}
	client := mcpsdk.NewClient(&mcpsdk.Implementation{Name: "caddy-mastio", Version: mastio.Version()}, opts)
	client.AddReceivingMiddleware(append([]mcpsdk.Middleware{transport.counter.middleware}, middleware...)...)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(10*time.Second, s.CallTimeout()))
	defer cancel()
	sess, err := client.Connect(cctx, &mcpsdk.StreamableClientTransport{Endpoint: s.URL, HTTPClient: httpClient,
		DisableStandaloneSSE: opts.CreateMessageHandler == nil && opts.ElicitationHandler == nil && opts.LoggingMessageHandler == nil,
		MaxRetries:           -1}, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to MCP server %s: %w", name, err)
	}
	p.mu.Lock()
	p.counters[sess] = transport.counter
	p.mu.Unlock()
	go func() {
		sess.Wait()
		p.mu.Lock()
		delete(p.counters, sess)
		p.mu.Unlock()
	}()
	return client, sess, nil
}

// catchUp returns once the handlers of up's client are done with what it
// has received (see messageCounter).
func (p *Pool) catchUp(up *mcpsdk.ClientSession) {
	p.mu.Lock()
	c := p.counters[up]
	p.mu.Unlock()
	if c != nil {
		c.catchUp()
	}
}

// entry returns the server's pool entry, replacing it when the settings
// changed.
func (p *Pool) entry(name string, s *mastio.Server) *upstreamConn {
	fp := s.Fingerprint()
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.conns[name]
	if c != nil && c.fp != fp { // settings changed
		go c.close()
		c = nil
	}
	if c == nil {
		c = &upstreamConn{fp: fp}
		p.conns[name] = c
	}
	return c
}

// session returns the shared client session to the named server.
func (p *Pool) session(ctx context.Context, name string, s *mastio.Server) (*mcpsdk.ClientSession, error) {
	c := p.entry(name, s)
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.sessionLocked(ctx, c, name, s)
}

func (p *Pool) sessionLocked(ctx context.Context, c *upstreamConn, name string, s *mastio.Server) (*mcpsdk.ClientSession, error) {
	if c.session != nil {
		return c.session, nil
	}
	stale := func(context.Context) {
		c.stale.Store(true)
		go p.changed()
	}
	_, sess, err := p.connect(ctx, name, s, &mcpsdk.ClientOptions{
		ToolListChangedHandler:     func(ctx context.Context, _ *mcpsdk.ToolListChangedRequest) { stale(ctx) },
		PromptListChangedHandler:   func(ctx context.Context, _ *mcpsdk.PromptListChangedRequest) { stale(ctx) },
		ResourceListChangedHandler: func(ctx context.Context, _ *mcpsdk.ResourceListChangedRequest) { stale(ctx) },
	})
	if err != nil {
		return nil, err
	}
	c.session = sess
	return sess, nil
}
