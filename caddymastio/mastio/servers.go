package mastio

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Server is an upstream MCP server that the /v1/mcp aggregator serves to
// agents. It is registered in the config (the mcp_servers of the mastio
// app) or through the admin API (/v1/admin/mcp-servers).
type Server struct {
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

	// Prefix of this server's items in the aggregator: tools and prompts
	// are named <prefix>.<name>, resources take the URI scheme
	// mastio-<prefix>+<scheme>. Default: the server's name. "-": the items
	// keep their own names (one that another server's item has already is
	// left out).
	Prefix string `json:"prefix,omitempty"`

	// How long one call may take. Default: 30s.
	Timeout Duration `json:"timeout,omitempty"`

	// Largest arguments of one tools/call, in bytes. Default: 262144.
	MaxArgumentBytes int64 `json:"max_argument_bytes,omitempty"`

	// Calls per minute per agent on this server. Default: 600. -1: none.
	AgentRate int `json:"agent_rate,omitempty"`

	// Calls per minute per agent per tool of this server. Default: 120.
	// -1: none.
	ItemRate int `json:"item_rate,omitempty"`

	// OAuth has the Mastio get this server's access tokens with the OAuth
	// client credentials grant, instead of a static bearer.
	OAuth *OAuthClient `json:"oauth,omitempty"`

	// ClientCertificate has the Mastio present its workload certificate
	// (from the Org CA; see Mastio.WorkloadSPIFFEID) to a server that
	// asks for one: mTLS to the upstream.
	ClientCertificate bool `json:"client_certificate,omitempty"`

	// CAFile is a PEM file of the roots this server's certificate is
	// verified with. Default: the system's roots and the Org root.
	CAFile string `json:"ca_file,omitempty"`
}

var serverNamePattern = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// Validate checks a server's settings.
func (s *Server) Validate(name string) error {
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
	return s.validateAuth(name)
}

// ToolPrefix is the prefix of the server's items in the aggregator: the
// configured prefix, the server's name by default, "" for "-" (the items
// keep their own names).
func (s *Server) ToolPrefix(name string) string {
	switch s.Prefix {
	case "":
		return name
	case "-":
		return ""
	}
	return s.Prefix
}

// CallTimeout is how long one call may take.
func (s *Server) CallTimeout() time.Duration {
	if s.Timeout > 0 {
		return time.Duration(s.Timeout)
	}
	return 30 * time.Second
}

// Rates are the per-agent and per-agent-per-tool limits in calls per
// minute; 0 means none.
func (s *Server) Rates() (agent, item int) {
	return CallLimit(s.AgentRate, DefaultAgentRate), CallLimit(s.ItemRate, DefaultItemRate)
}

// MaxArgs is the largest arguments of one call, in bytes.
func (s *Server) MaxArgs() int64 {
	if s.MaxArgumentBytes > 0 {
		return s.MaxArgumentBytes
	}
	return 256 << 10
}

// Fingerprint identifies settings that need a new connection when
// changed.
func (s *Server) Fingerprint() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Redacted is the server as the admin API shows it: header values and
// secret names only, never secret values.
func (s *Server) Redacted(name, source string) map[string]any {
	headers := map[string]string{}
	for k, v := range s.Headers {
		if strings.Contains(v, "{") {
			headers[k] = v // a placeholder: shows where the secret comes from
		} else {
			headers[k] = "(set)"
		}
	}
	out := map[string]any{"name": name, "url": s.URL, "headers": headers, "bearer_secret": s.BearerSecret,
		"prefix": s.ToolPrefix(name), "timeout_seconds": s.CallTimeout().Seconds(), "max_argument_bytes": s.MaxArgs(), "source": source,
		"client_certificate": s.ClientCertificate}
	if s.CAFile != "" {
		out["ca_file"] = s.CAFile
	}
	if o := s.OAuth; o != nil {
		secret := "(set)"
		if strings.Contains(o.ClientSecret, "{") {
			secret = o.ClientSecret
		}
		oauth := map[string]any{"token_url": o.TokenURL, "client_id": o.ClientID, "scopes": o.Scopes, "resource": o.Resource}
		if o.ClientSecretName != "" {
			oauth["client_secret_name"] = o.ClientSecretName
		} else {
			oauth["client_secret"] = secret
		}
		out["oauth"] = oauth
	}
	return out
}

// Servers returns every upstream: the configuration's and the stored ones
// (a stored server cannot shadow a configured one), and where each comes
// from ("config" or "store").
func (m *Mastio) Servers(ctx context.Context) (map[string]*Server, map[string]string, error) {
	all := map[string]*Server{}
	source := map[string]string{}
	for n, s := range m.cfg.Servers {
		all[n], source[n] = s, "config"
	}
	stored, err := m.storedServers(ctx)
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
func (s *Shared) storedServers(ctx context.Context) (map[string]*Server, error) {
	s.storedMu.Lock()
	defer s.storedMu.Unlock()
	if s.stored != nil {
		return s.stored, nil
	}
	list, err := s.store.Servers(ctx)
	if err != nil {
		return nil, err
	}
	m := map[string]*Server{}
	for _, rec := range list {
		var srv Server
		if err := json.Unmarshal(rec.Config, &srv); err != nil {
			return nil, fmt.Errorf("stored MCP server %s: %w", rec.Name, err)
		}
		m[rec.Name] = &srv
	}
	s.stored = m
	return m, nil
}

// forgetStoredServers makes the next storedServers read the database.
func (s *Shared) forgetStoredServers() {
	s.storedMu.Lock()
	s.stored = nil
	s.storedMu.Unlock()
}

// ListServers lists every upstream as the admin API shows it.
func (m *Mastio) ListServers(ctx context.Context) ([]map[string]any, error) {
	all, source, err := m.Servers(ctx)
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

// PutServer registers or replaces a stored server. Literal credentials
// (a bearer token, an OAuth client secret) go to the key store, not the
// database: under names of their own, written only once the settings are
// valid, removed again if the registration is not committed, and the
// replaced server's removed once it is.
func (m *Mastio) PutServer(ctx context.Context, name string, s *Server, bearerToken string, details map[string]any) error {
	if _, ok := m.cfg.Servers[name]; ok {
		return fmt.Errorf("MCP server %s is defined in the config; change it there", name)
	}
	secrets := map[string]string{} // key-store name -> value, to write
	if bearerToken != "" {
		if s.BearerSecret != "" {
			return errors.New("give bearer_token or bearer_secret, not both")
		}
		s.BearerSecret = "mcp-server-" + name + "." + randomHex(6) + ".token"
		secrets[s.BearerSecret] = bearerToken
	}
	if o := s.OAuth; o != nil && o.ClientSecret != "" && !strings.Contains(o.ClientSecret, "{") {
		if o.ClientSecretName != "" {
			return errors.New("give oauth client_secret or client_secret_name, not both")
		}
		c := *o
		c.ClientSecretName, c.ClientSecret = "mcp-server-"+name+"."+randomHex(6)+".oauth", ""
		secrets[c.ClientSecretName] = o.ClientSecret
		s.OAuth = &c
	}
	if err := s.Validate(name); err != nil {
		return err
	}
	if err := s.CheckFiles(name); err != nil {
		return err
	}
	previous, err := m.storedServers(ctx)
	if err != nil {
		return err
	}
	var old []string
	if p := previous[name]; p != nil {
		for _, ref := range p.secretRefs() {
			if storedByAPI(name, ref) && !slices.Contains(s.secretRefs(), ref) {
				old = append(old, ref)
			}
		}
	}
	for ref, value := range secrets {
		if err := m.keyStore.Store(ref, []byte(value)); err != nil {
			for ref := range secrets {
				m.keyStore.Delete(ref)
			}
			return err
		}
	}
	cfg, _ := json.Marshal(s)
	defer m.forgetStoredServers()
	_, err = m.audit.Change(ctx, func(c *audit.Change) error {
		c.Record(audit.Event{Type: "mcp_server.registered", Actor: ActorOf(ctx), Subject: name,
			Details: mergeMaps(map[string]any{"server": s.Redacted(name, "store")}, details)})
		return c.PutServer(ctx, &store.Server{Name: name, Config: cfg})
	})
	if err != nil {
		for ref := range secrets {
			m.removeSecret(ref)
		}
		return err
	}
	for _, ref := range old {
		m.removeSecret(ref)
	}
	m.serverChanged(name)
	return nil
}

// secretRefs are the key-store secrets the server's settings name.
func (s *Server) secretRefs() []string {
	var refs []string
	if s.BearerSecret != "" {
		refs = append(refs, s.BearerSecret)
	}
	if s.OAuth != nil && s.OAuth.ClientSecretName != "" {
		refs = append(refs, s.OAuth.ClientSecretName)
	}
	return refs
}

// removeSecret deletes a credential the registry no longer refers to; a
// failure is logged (the file stays 0600 in the key store).
func (m *Mastio) removeSecret(ref string) {
	if err := m.keyStore.Delete(ref); err != nil {
		m.log.Error("removing an MCP server credential", zap.String("secret", ref), zap.Error(err))
	}
}

// storedByAPI reports a key-store secret the admin API wrote for server
// name (its to remove), as opposed to one an operator put there.
func storedByAPI(name, ref string) bool {
	if ref == "mcp-server-"+name+".token" {
		return true
	}
	mid, ok := strings.CutPrefix(ref, "mcp-server-"+name+".")
	mid, kind, ok2 := strings.Cut(mid, ".")
	_, err := hex.DecodeString(mid)
	return ok && ok2 && (kind == "token" || kind == "oauth") && err == nil && mid != ""
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// DeleteServer removes a stored server; false if there was none.
func (m *Mastio) DeleteServer(ctx context.Context, name string, details map[string]any) (bool, error) {
	found := false
	previous, err := m.storedServers(ctx)
	if err != nil {
		return false, err
	}
	defer m.forgetStoredServers()
	_, err = m.audit.Change(ctx, func(c *audit.Change) error {
		if found, err = c.DeleteServer(ctx, name); err != nil {
			return err
		}
		if !found {
			return errNotFound
		}
		c.Record(audit.Event{Type: "mcp_server.removed", Actor: ActorOf(ctx), Subject: name, Details: details})
		return nil
	})
	if errors.Is(err, errNotFound) {
		return false, nil
	}
	m.serverChanged(name)
	if p := previous[name]; err == nil && p != nil {
		for _, ref := range p.secretRefs() {
			if storedByAPI(name, ref) {
				m.removeSecret(ref) // a credential the admin API stored
			}
		}
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

// Duration is a time.Duration that JSON reads as nanoseconds or as a Go
// duration string ("30s"), as Caddy's configuration does.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("a duration: want nanoseconds or a string like \"30s\": %w", err)
	}
	*d = Duration(n)
	return nil
}

// OnServerChange registers fn, called with a server's name when it is
// registered, replaced or removed (a pool drops its connection, an
// aggregator lists it again); remove unregisters it.
func (s *Shared) OnServerChange(fn func(name string)) (remove func()) { return s.serverWatch.Add(fn) }

func (s *Shared) serverChanged(name string) { s.serverWatch.Notify(name) }

// SetCredentials sets the server's credentials on an outgoing request
// header: its configured headers, with placeholders resolved by resolve
// (each time, so that a rotated secret is picked up), and its bearer
// secret from the key store.
func (m *Mastio) SetCredentials(h http.Header, s *Server, resolve func(string) string) error {
	for k, v := range s.Headers {
		h.Set(k, resolve(v))
	}
	if s.BearerSecret != "" {
		secret, err := m.keyStore.Load(s.BearerSecret)
		if err != nil {
			return fmt.Errorf("credentials of the MCP server: %w", err)
		}
		h.Set("Authorization", "Bearer "+strings.TrimSpace(string(secret)))
	}
	return nil
}
