package gateway

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// upstreamTransport sends the requests of a client session to one
// upstream server (counting the messages of its event streams: see
// messageCounter) with the server's credentials — its headers and bearer
// secret, or an OAuth access token — over TLS as Mastio.UpstreamTLS has
// it (the workload certificate for mTLS). A request refused with 401
// while an OAuth token was used is sent once more with a new token (the
// old one may have been revoked or have expired early).
type upstreamTransport struct {
	pool    *Pool
	server  *mastio.Server
	tokens  *oauthTokens // nil without OAuth
	counter *messageCounter
	base    http.RoundTripper
}

func (p *Pool) newTransport(name string, s *mastio.Server) (*upstreamTransport, error) {
	tlsCfg, err := p.m.UpstreamTLS(s)
	if err != nil {
		return nil, fmt.Errorf("MCP server %s: %w", name, err)
	}
	t := &upstreamTransport{pool: p, server: s, base: &http.Transport{TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 32,
		IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: s.CallTimeout(), ForceAttemptHTTP2: true}}
	if s.OAuth != nil {
		t.tokens = p.tokensFor(name, s)
	}
	return t, nil
}

func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.send(req)
	if err == nil && t.counter != nil && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body = &eventScanner{ReadCloser: resp.Body, counter: t.counter}
	}
	return resp, err
}

func (t *upstreamTransport) send(req *http.Request) (*http.Response, error) {
	out := req.Clone(req.Context())
	if err := t.pool.m.SetCredentials(out.Header, t.server, t.pool.resolve); err != nil {
		return nil, err
	}
	if t.tokens == nil {
		return t.base.RoundTrip(out)
	}
	token, err := t.tokens.get(req.Context(), "")
	if err != nil {
		return nil, err
	}
	out.Header.Set("Authorization", "Bearer "+token)
	resp, err := t.base.RoundTrip(out)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || (req.Body != nil && req.GetBody == nil) {
		return resp, err
	}
	resp.Body.Close()
	if token, err = t.tokens.get(req.Context(), token); err != nil {
		return nil, err
	}
	again := req.Clone(req.Context())
	if req.Body != nil {
		if again.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	if err := t.pool.m.SetCredentials(again.Header, t.server, t.pool.resolve); err != nil {
		return nil, err
	}
	again.Header.Set("Authorization", "Bearer "+token)
	return t.base.RoundTrip(again)
}

// oauthTokens is one server's OAuth access token, shared by its sessions.
type oauthTokens struct {
	pool   *Pool
	name   string
	server *mastio.Server
	client *http.Client // to the token endpoint

	mu    sync.Mutex
	token *oauth2.Token
}

// tokensFor is the token cache of the server, new when its settings
// changed.
func (p *Pool) tokensFor(name string, s *mastio.Server) *oauthTokens {
	p.mu.Lock()
	defer p.mu.Unlock()
	if o := p.tokens[name]; o != nil && o.server.Fingerprint() == s.Fingerprint() {
		return o
	}
	tlsCfg, _ := p.m.UpstreamTLS(&mastio.Server{}) // the system's roots and the Org root
	o := &oauthTokens{pool: p, name: name, server: s,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}}
	if p.tokens == nil {
		p.tokens = map[string]*oauthTokens{}
	}
	p.tokens[name] = o
	return o
}

// get returns a valid access token: the one held, unless it expires
// within 10 s or is refused (the server answered 401 to it); else a new
// one from the token endpoint (the client secret read anew each time).
func (o *oauthTokens) get(ctx context.Context, refused string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if t := o.token; t.Valid() && (refused == "" || t.AccessToken != refused) {
		return t.AccessToken, nil
	}
	c := o.server.OAuth
	secret, err := o.pool.m.OAuthClientSecret(c, o.pool.resolve)
	if err != nil {
		return "", err
	}
	resource := c.Resource
	if resource == "" {
		resource = o.server.URL
	}
	cfg := clientcredentials.Config{ClientID: c.ClientID, ClientSecret: secret, TokenURL: c.TokenURL, Scopes: c.Scopes,
		EndpointParams: url.Values{"resource": {resource}}, AuthStyle: oauth2.AuthStyleInHeader}
	t, err := cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, o.client))
	if err != nil {
		return "", fmt.Errorf("getting an access token for MCP server %s from %s: %w", o.name, c.TokenURL, err)
	}
	o.token = t
	return t.AccessToken, nil
}
