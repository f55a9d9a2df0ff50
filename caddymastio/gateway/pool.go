package gateway

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// Pool holds one MCP client session (of the official Go SDK) per upstream
// server, shared by all agents — the upstream sees the gateway, with the
// server's own credentials — reconnected when the settings change or the
// session breaks, with a short cache of each server's tool list. mu
// guards the map only: connecting to one server (up to 10 s) holds that
// server's entry, not the pool.
type Pool struct {
	m       *mastio.Mastio
	resolve func(string) string
	unwatch func()

	mu    sync.Mutex
	conns map[string]*upstreamConn
}

type upstreamConn struct {
	fp string

	mu      sync.Mutex // held while connecting
	session *mcpsdk.ClientSession

	tools   []*mcpsdk.Tool // guarded by the pool's mu
	toolsAt time.Time
}

const toolsCacheTTL = 30 * time.Second

// NewPool returns an empty pool; resolve expands placeholders in the
// servers' header values when requests are made. Close releases it.
func NewPool(m *mastio.Mastio, resolve func(string) string) *Pool {
	p := &Pool{m: m, resolve: resolve, conns: map[string]*upstreamConn{}}
	p.unwatch = m.OnServerChange(p.drop)
	return p
}

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

// credentialTransport adds a server's credentials to every request.
type credentialTransport struct {
	pool   *Pool
	server *mastio.Server
	base   http.RoundTripper
}

func (t *credentialTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	if err := t.pool.m.SetCredentials(req.Header, t.server, t.pool.resolve); err != nil {
		return nil, err
	}
	return t.base.RoundTrip(req)
}

// session returns a live client session to the named server.
func (p *Pool) session(ctx context.Context, name string, s *mastio.Server) (*upstreamConn, error) {
	fp := s.Fingerprint()
	p.mu.Lock()
	c := p.conns[name]
	if c != nil && c.fp != fp { // settings changed
		go c.close()
		c = nil
	}
	if c == nil {
		c = &upstreamConn{fp: fp}
		p.conns[name] = c
	}
	p.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != nil {
		return c, nil
	}
	httpClient := &http.Client{Transport: &credentialTransport{pool: p, server: s,
		base: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: s.CallTimeout()}}}
	client := mcpsdk.NewClient(&mcpsdk.Implementation{Name: "caddy-mastio", Version: mastio.Version()}, nil)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(10*time.Second, s.CallTimeout()))
	defer cancel()
	sess, err := client.Connect(cctx, &mcpsdk.StreamableClientTransport{Endpoint: s.URL, HTTPClient: httpClient,
		DisableStandaloneSSE: true, MaxRetries: -1}, nil)
	if err != nil {
		return nil, fmt.Errorf("connecting to MCP server %s: %w", name, err)
	}
	c.session = sess
	return c, nil
}

// tools returns the server's tools, from a 30-second cache.
func (p *Pool) tools(ctx context.Context, name string, s *mastio.Server) ([]*mcpsdk.Tool, error) {
	c, err := p.session(ctx, name, s)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if time.Since(c.toolsAt) < toolsCacheTTL {
		tools := c.tools
		p.mu.Unlock()
		return tools, nil
	}
	p.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, s.CallTimeout())
	defer cancel()
	var tools []*mcpsdk.Tool
	for t, err := range c.session.Tools(lctx, nil) {
		if err != nil {
			p.drop(name)
			return nil, fmt.Errorf("listing the tools of MCP server %s: %w", name, err)
		}
		tools = append(tools, t)
	}
	p.mu.Lock()
	c.tools, c.toolsAt = tools, time.Now()
	p.mu.Unlock()
	return tools, nil
}
