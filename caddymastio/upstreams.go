package caddymastio

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// MCPServer is an upstream MCP server that the /v1/mcp aggregator serves
// to agents. It is registered in the config (the mcp_servers of the mastio
// app) or through the admin API (/v1/admin/mcp-servers).
type MCPServer struct {
	// The server's Streamable HTTP endpoint, e.g. https://mcp.internal/mcp.
	URL string `json:"url"`

	// Headers sent to the server with every request: its credentials, such
	// as "Authorization": "Bearer {env.WEATHER_TOKEN}". Placeholders are
	// resolved when requests are made, so secrets stay out of the config.
	// The agent's own credentials are never forwarded.
	Headers map[string]string `json:"headers,omitempty"`

	// Name of a secret in the key store (data/keys/<name>, mode 0600) sent
	// as "Authorization: Bearer <secret>". The admin API stores a
	// bearer_token given to it this way.
	BearerSecret string `json:"bearer_secret,omitempty"`

	// Prefix of this server's tools in the aggregated list:
	// <prefix>.<tool>. Default: the server's name.
	Prefix string `json:"prefix,omitempty"`

	// How long one call may take. Default: 30s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Largest arguments of one tools/call, in bytes. Default: 262144.
	MaxArgumentBytes int64 `json:"max_argument_bytes,omitempty"`

	// Calls per minute per agent on this server. Default: 600. -1: none.
	AgentRate int `json:"agent_rate,omitempty"`

	// Calls per minute per agent per tool of this server. Default: 120.
	// -1: none.
	ItemRate int `json:"item_rate,omitempty"`
}

var serverNamePattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// validate checks a server's settings.
func (s *MCPServer) validate(name string) error {
	if !serverNamePattern.MatchString(name) {
		return fmt.Errorf("MCP server name %q: want 1-64 characters of a-z, A-Z, 0-9, '_', '-'", name)
	}
	u, err := url.Parse(s.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return fmt.Errorf("MCP server %s: url %q must be an http(s) URL", name, s.URL)
	}
	if s.Prefix != "" && !serverNamePattern.MatchString(s.Prefix) {
		return fmt.Errorf("MCP server %s: prefix %q: want 1-64 characters of a-z, A-Z, 0-9, '_', '-'", name, s.Prefix)
	}
	for h := range s.Headers {
		if strings.ContainsAny(h, " :\r\n") || h == "" {
			return fmt.Errorf("MCP server %s: bad header name %q", name, h)
		}
	}
	if s.Timeout < 0 || s.MaxArgumentBytes < 0 {
		return fmt.Errorf("MCP server %s: timeout and max_argument_bytes must be positive", name)
	}
	if s.AgentRate < -1 || s.ItemRate < -1 {
		return fmt.Errorf("MCP server %s: agent_rate and item_rate are calls per minute, or -1 for no limit", name)
	}
	return nil
}

func (s *MCPServer) prefix(name string) string {
	if s.Prefix != "" {
		return s.Prefix
	}
	return name
}

func (s *MCPServer) timeout() time.Duration {
	if s.Timeout > 0 {
		return time.Duration(s.Timeout)
	}
	return 30 * time.Second
}

// rates are the per-agent and per-agent-per-tool limits in calls per
// minute; 0 means none.
func (s *MCPServer) rates() (agent, item int) {
	agent, item = 600, 120
	if s.AgentRate != 0 {
		agent = max(s.AgentRate, 0)
	}
	if s.ItemRate != 0 {
		item = max(s.ItemRate, 0)
	}
	return agent, item
}

func (s *MCPServer) maxArgs() int64 {
	if s.MaxArgumentBytes > 0 {
		return s.MaxArgumentBytes
	}
	return 256 << 10
}

// fingerprint identifies settings that need a new connection when changed.
func (s *MCPServer) fingerprint() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Redacted is the server as the admin API shows it: header values and
// secret names only, never secret values.
func (s *MCPServer) Redacted(name, source string) map[string]any {
	headers := map[string]string{}
	for k, v := range s.Headers {
		if strings.Contains(v, "{") {
			headers[k] = v // a placeholder: shows where the secret comes from
		} else {
			headers[k] = "(set)"
		}
	}
	return map[string]any{"name": name, "url": s.URL, "headers": headers, "bearer_secret": s.BearerSecret,
		"prefix": s.prefix(name), "timeout_seconds": s.timeout().Seconds(), "max_argument_bytes": s.maxArgs(), "source": source}
}

// servers returns every upstream: the config's and the stored ones (a
// stored server cannot shadow a config one).
func (a *App) servers(ctx context.Context) (map[string]*MCPServer, map[string]string, error) {
	all := map[string]*MCPServer{}
	source := map[string]string{}
	for n, s := range a.MCPServers {
		all[n], source[n] = s, "config"
	}
	stored, err := a.state.storedServers(ctx)
	if err != nil {
		return nil, nil, err
	}
	for n, s := range stored {
		if _, ok := all[n]; !ok {
			all[n], source[n] = s, "store"
		}
	}
	return all, source, nil
}

// storedServers returns the servers registered through the admin API. They
// are read from the database once and again after each change, not on
// every call (only this process changes them).
func (s *state) storedServers(ctx context.Context) (map[string]*MCPServer, error) {
	s.storedMu.Lock()
	defer s.storedMu.Unlock()
	if s.stored != nil {
		return s.stored, nil
	}
	rows, err := s.store.DB().QueryContext(ctx, `SELECT name, config FROM mcp_servers`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[string]*MCPServer{}
	for rows.Next() {
		var n, cfg string
		if err := rows.Scan(&n, &cfg); err != nil {
			return nil, err
		}
		var srv MCPServer
		if err := json.Unmarshal([]byte(cfg), &srv); err != nil {
			return nil, fmt.Errorf("stored MCP server %s: %w", n, err)
		}
		m[n] = &srv
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	s.stored = m
	return m, nil
}

// forgetStoredServers makes the next storedServers read the database.
func (s *state) forgetStoredServers() {
	s.storedMu.Lock()
	s.stored = nil
	s.storedMu.Unlock()
}

// ListServers implements admin.Upstreams.
func (a *App) ListServers(ctx context.Context) ([]map[string]any, error) {
	all, source, err := a.servers(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	out := []map[string]any{}
	for _, n := range names {
		out = append(out, all[n].Redacted(n, source[n]))
	}
	return out, nil
}

// PutServer implements admin.Upstreams: register or replace a stored
// server. A literal bearer token goes to the key store, not the database:
// under a name of its own, written only once the settings are valid,
// removed again if the registration is not committed, and the replaced
// server's token removed once it is.
func (a *App) PutServer(ctx context.Context, name string, s *MCPServer, bearerToken string, details map[string]any) error {
	if _, ok := a.MCPServers[name]; ok {
		return fmt.Errorf("MCP server %s is defined in the config; change it there", name)
	}
	if bearerToken != "" {
		if s.BearerSecret != "" {
			return errors.New("give bearer_token or bearer_secret, not both")
		}
		s.BearerSecret = "mcp-server-" + name + "." + randomHex(6) + ".token"
	}
	if err := s.validate(name); err != nil {
		return err
	}
	previous, err := a.state.storedServers(ctx)
	if err != nil {
		return err
	}
	var old string
	if p := previous[name]; p != nil && p.BearerSecret != s.BearerSecret && storedByAPI(name, p.BearerSecret) {
		old = p.BearerSecret
	}
	if bearerToken != "" {
		if err := a.state.keyStore.Store(s.BearerSecret, []byte(bearerToken)); err != nil {
			return err
		}
	}
	cfg, _ := json.Marshal(s)
	defer a.state.forgetStoredServers()
	err = a.state.withAudit(ctx, func(tx *sql.Tx) error {
		now := store.FormatTime(time.Now())
		_, err := tx.ExecContext(ctx, `INSERT INTO mcp_servers (name, config, created_at, updated_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at`, name, string(cfg), now, now)
		return err
	}, audit.Event{Type: "mcp_server.registered", Actor: "admin", Subject: name,
		Details: mergeMaps(map[string]any{"server": s.Redacted(name, "store")}, details)})
	switch {
	case err != nil && bearerToken != "":
		a.removeSecret(s.BearerSecret)
	case err == nil && old != "":
		a.removeSecret(old)
	}
	return err
}

// removeSecret deletes a credential the registry no longer refers to; a
// failure is logged (the file stays 0600 in the key store).
func (a *App) removeSecret(ref string) {
	if err := a.state.keyStore.Delete(ref); err != nil {
		a.logger.Error("removing an MCP server credential", zap.String("secret", ref), zap.Error(err))
	}
}

// storedByAPI reports a key-store secret the admin API wrote for server
// name (its to remove), as opposed to one an operator put there.
func storedByAPI(name, ref string) bool {
	if ref == "mcp-server-"+name+".token" {
		return true
	}
	mid, ok := strings.CutPrefix(ref, "mcp-server-"+name+".")
	mid, ok2 := strings.CutSuffix(mid, ".token")
	_, err := hex.DecodeString(mid)
	return ok && ok2 && err == nil && mid != ""
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// PutServerJSON implements admin.Upstreams.
func (a *App) PutServerJSON(ctx context.Context, name string, settings json.RawMessage, bearerToken string, details map[string]any) error {
	var s MCPServer
	dec := json.NewDecoder(strings.NewReader(string(settings)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return fmt.Errorf("MCP server settings: %w", err)
	}
	return a.PutServer(ctx, name, &s, bearerToken, details)
}

// DeleteServer implements admin.Upstreams.
func (a *App) DeleteServer(ctx context.Context, name string, details map[string]any) (bool, error) {
	found := false
	previous, err := a.state.storedServers(ctx)
	if err != nil {
		return false, err
	}
	defer a.state.forgetStoredServers()
	err = a.state.withAudit(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM mcp_servers WHERE name = ?`, name)
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		if found = n > 0; !found {
			return errNotFound
		}
		return nil
	}, audit.Event{Type: "mcp_server.removed", Actor: "admin", Subject: name, Details: details})
	if errors.Is(err, errNotFound) {
		return false, nil
	}
	a.state.upstreams.drop(name)
	if p := previous[name]; err == nil && p != nil && storedByAPI(name, p.BearerSecret) {
		a.removeSecret(p.BearerSecret) // a token the admin API stored
	}
	return found, err
}

var errNotFound = errors.New("not found")

func mergeMaps(a, b map[string]any) map[string]any {
	for k, v := range b {
		a[k] = v
	}
	return a
}

// withAudit runs fn and appends ev in one transaction.
func (s *state) withAudit(ctx context.Context, fn func(tx *sql.Tx) error, ev audit.Event) error {
	tx, err := s.store.DB().BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if _, err := s.audit.AppendTx(ctx, tx, ev); err != nil {
		return err
	}
	if err := s.store.CheckFile(); err != nil {
		return err
	}
	return tx.Commit()
}

// upstreamPool holds one MCP client session per upstream server, shared by
// all agents (the upstream sees the gateway, with its own credentials),
// reconnected when the settings change or the session breaks, and a short
// cache of each server's tool list. mu guards the map only: connecting to
// one server (up to 10 s) holds that server's entry, not the pool.
type upstreamPool struct {
	mu    sync.Mutex
	conns map[string]*upstreamConn
}

type upstreamConn struct {
	fp string

	mu      sync.Mutex // held while connecting
	session *mcp.ClientSession

	tools   []*mcp.Tool // guarded by the pool's mu
	toolsAt time.Time
}

const toolsCacheTTL = 30 * time.Second

// drop forgets the server's session (broken, or the server was removed);
// the next use connects again.
func (p *upstreamPool) drop(name string) {
	p.mu.Lock()
	c := p.conns[name]
	delete(p.conns, name)
	p.mu.Unlock()
	if c != nil {
		go c.close() // closing may talk to the server; nobody waits for it
	}
}

func (p *upstreamPool) closeAll() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
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

// credentialTransport adds a server's credentials to every request,
// resolving placeholders each time.
type credentialTransport struct {
	server *MCPServer
	keys   interface{ Load(string) ([]byte, error) }
	base   http.RoundTripper
}

func (t *credentialTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	repl := caddy.NewReplacer()
	for k, v := range t.server.Headers {
		req.Header.Set(k, repl.ReplaceKnown(v, ""))
	}
	if t.server.BearerSecret != "" {
		secret, err := t.keys.Load(t.server.BearerSecret)
		if err != nil {
			return nil, fmt.Errorf("credentials of the MCP server: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(secret)))
	}
	return t.base.RoundTrip(req)
}

// session returns a live client session to the named server.
func (a *App) upstreamSession(ctx context.Context, name string, s *MCPServer) (*upstreamConn, error) {
	pool := &a.state.upstreams
	fp := s.fingerprint()
	pool.mu.Lock()
	if pool.conns == nil {
		pool.conns = map[string]*upstreamConn{}
	}
	c := pool.conns[name]
	if c != nil && c.fp != fp { // settings changed
		go c.close()
		c = nil
	}
	if c == nil {
		c = &upstreamConn{fp: fp}
		pool.conns[name] = c
	}
	pool.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.session != nil {
		return c, nil
	}
	httpClient := &http.Client{Transport: &credentialTransport{server: s, keys: a.state.keyStore,
		base: &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: s.timeout()}}}
	client := mcp.NewClient(&mcp.Implementation{Name: "caddy-mastio", Version: Version()}, nil)
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(10*time.Second, s.timeout()))
	defer cancel()
	sess, err := client.Connect(cctx, &mcp.StreamableClientTransport{Endpoint: s.URL, HTTPClient: httpClient,
		DisableStandaloneSSE: true, MaxRetries: -1}, nil)
	if err != nil {
		return nil, fmt.Errorf("connecting to MCP server %s: %w", name, err)
	}
	c.session = sess
	return c, nil
}

// upstreamTools returns the server's tools, from a 30-second cache.
func (a *App) upstreamTools(ctx context.Context, name string, s *MCPServer) ([]*mcp.Tool, error) {
	c, err := a.upstreamSession(ctx, name, s)
	if err != nil {
		return nil, err
	}
	a.state.upstreams.mu.Lock()
	if time.Since(c.toolsAt) < toolsCacheTTL {
		tools := c.tools
		a.state.upstreams.mu.Unlock()
		return tools, nil
	}
	a.state.upstreams.mu.Unlock()
	lctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	var tools []*mcp.Tool
	for t, err := range c.session.Tools(lctx, nil) {
		if err != nil {
			a.state.upstreams.drop(name)
			return nil, fmt.Errorf("listing the tools of MCP server %s: %w", name, err)
		}
		tools = append(tools, t)
	}
	a.state.upstreams.mu.Lock()
	c.tools, c.toolsAt = tools, time.Now()
	a.state.upstreams.mu.Unlock()
	return tools, nil
}
