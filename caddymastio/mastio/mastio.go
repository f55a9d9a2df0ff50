// Package mastio is the Mastio itself, free of Caddy: the organisation's
// agents, their certificates and tokens, the MCP policy and upstream
// registry, and the audit log, kept in a store with a key store and a
// clock. Every surface calls it — the Mastio's own HTTP endpoints, the MCP
// gateway, the admin API, the CLI — and none reaches into another's state.
//
// A Shared is the state of one data location (database, CA, keys, audit
// writer, caches): opened once, shared by every configuration that uses
// the location, since a reload provisions a new configuration while the
// old one still serves. A Mastio is one configuration's view of it: the
// Shared with that configuration's Settings and logger, so that a reload
// that changes a setting changes it for the new configuration only.
package mastio

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// Settings are what a configuration decides; the zero value of a field
// takes its default.
type Settings struct {
	// TrustDomain of agent SPIFFE IDs. Default: mastio.local.
	TrustDomain string
	// PublicURL is where agents reach the Mastio (scheme://host[:port]);
	// nil: each request's own scheme and host.
	PublicURL *url.URL
	// AgentCertLifetime, EnrollmentTTL and TokenTTL: 365 days, 30 minutes
	// and 5 minutes by default.
	AgentCertLifetime time.Duration
	EnrollmentTTL     time.Duration
	TokenTTL          time.Duration
	// AllowBearerTokens mints unbound tokens to callers without a proof.
	AllowBearerTokens bool
	// NonceMode for DPoP proofs (default: required).
	NonceMode dpop.NonceMode
	// IATWindow is how old a proof may be (60s), ClockSkew how far in the
	// future (5s).
	IATWindow time.Duration
	ClockSkew time.Duration
	// Policy is the configuration's MCP policy, in the policy language
	// (the stored rules apply too).
	Policy string
	// Servers are the configuration's MCP servers, by name.
	Servers map[string]*Server
	// AnonymousRates override the default limits of anonymous routes.
	AnonymousRates map[string]Rate
	// AdminSecret checks X-Admin-Secret.
	AdminSecret *Secret

	// AuditSync sets the shared audit writer's durability when the
	// configuration starts (see audit.Log).
	AuditSync audit.Sync
	// AuditCheckpointInterval is how often the chain's head is signed into
	// the chain when it grew (default DefaultCheckpointInterval).
	AuditCheckpointInterval time.Duration
	// AuditVerifyInterval is how often the background verifier walks the
	// rows appended since its last walk (default DefaultVerifyInterval).
	AuditVerifyInterval time.Duration
	// TimestampURL is an RFC 3161 timestamp authority (HTTP) that
	// timestamps audit bundles; "" for none.
	TimestampURL string

	// ClientIP and RequestPath read a request as the HTTP server saw it
	// (behind trusted proxies, before rewrites); by default the TCP peer
	// and the URL path.
	ClientIP    func(*http.Request) string
	RequestPath func(*http.Request) string
	// RequestID names the request a context belongs to in the logs (in
	// Caddy: {http.request.uuid}); nil or "" for none.
	RequestID func(context.Context) string
	// BackupConfig returns the configuration documents a backup holds, by
	// name (in Caddy: the mastio app's JSON and Caddy's autosaved config).
	BackupConfig func() map[string][]byte
}

// Default settings.
const (
	DefaultTrustDomain       = "mastio.local"
	DefaultAgentCertLifetime = 365 * 24 * time.Hour
	DefaultTokenTTL          = 5 * time.Minute
	DefaultIATWindow         = 60 * time.Second
)

// Mastio is one configuration's view of a Shared. It is safe for
// concurrent use.
type Mastio struct {
	*Shared
	cfg    Settings
	rules  []policy.Rule // of cfg.Policy
	issuer string
	log    *zap.Logger
	// decisionLog logs security decisions (mastio.decision);
	// decisionSampled is it sampled, for anonymous denials.
	decisionLog, decisionSampled *zap.Logger
}

// With returns the view of s for a configuration.
func (s *Shared) With(cfg Settings, log *zap.Logger) (*Mastio, error) {
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = DefaultTrustDomain
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.IATWindow == 0 {
		cfg.IATWindow = DefaultIATWindow
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = dpop.DefaultMaxSkew
	}
	if cfg.ClientIP == nil {
		cfg.ClientIP = PeerIP
	}
	if cfg.RequestPath == nil {
		cfg.RequestPath = func(r *http.Request) string { return r.URL.EscapedPath() }
	}
	if cfg.AdminSecret == nil {
		return nil, errors.New("an admin secret is required")
	}
	for name, srv := range cfg.Servers {
		if err := srv.Validate(name); err != nil {
			return nil, err
		}
		if err := srv.CheckFiles(name); err != nil {
			return nil, err
		}
	}
	rules, err := policy.Parse("config", cfg.Policy)
	if err != nil {
		return nil, err
	}
	m := &Mastio{Shared: s, cfg: cfg, rules: rules, log: log, decisionLog: log.Named("decision"),
		decisionSampled: sampledLogger(log.Named("decision")), issuer: "urn:mastio:" + s.orgID}
	if cfg.PublicURL != nil {
		m.issuer = cfg.PublicURL.String()
	}
	return m, nil
}

// PeerIP is the address of the TCP peer of r.
func PeerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Settings returns the configuration's settings.
func (m *Mastio) Settings() Settings { return m.cfg }

// Logger is the configuration's logger.
func (m *Mastio) Logger() *zap.Logger { return m.log }

// OrgID is the organisation id, fixed when the data location was created.
func (s *Shared) OrgID() string { return s.orgID }

// DataDir is the data directory of the location.
func (s *Shared) DataDir() string { return s.dataDir }

// Issuer is the iss (and aud) of the access tokens: the public URL, or
// urn:mastio:<org_id> when none is configured.
func (m *Mastio) Issuer() string { return m.issuer }

// PublicURL is the configured public URL, or "".
func (m *Mastio) PublicURL() string {
	if m.cfg.PublicURL == nil {
		return ""
	}
	return m.cfg.PublicURL.String()
}

// BaseURL is where the client of r reaches the Mastio: the public URL, or
// the scheme and host of the request.
func (m *Mastio) BaseURL(r *http.Request) string {
	if u := m.PublicURL(); u != "" {
		return u
	}
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	return scheme + "://" + r.Host
}

// RequestURL is the URL a DPoP proof for r must name: the base URL and
// the path as the client sent it.
func (m *Mastio) RequestURL(r *http.Request) string { return m.BaseURL(r) + m.cfg.RequestPath(r) }

// ClientIP is the caller's address.
func (m *Mastio) ClientIP(r *http.Request) string { return m.cfg.ClientIP(r) }

// RequestPath is the path of r as the client sent it.
func (m *Mastio) RequestPath(r *http.Request) string { return m.cfg.RequestPath(r) }

// issuance is what certificates issued under this configuration get.
func (m *Mastio) issuance() registry.Issuance {
	return registry.Issuance{TrustDomain: m.cfg.TrustDomain, AgentCertLifetime: m.cfg.AgentCertLifetime,
		EnrollmentTTL: m.cfg.EnrollmentTTL}
}

// Registry is the agent registry.
func (m *Mastio) Registry() *registry.Registry { return m.registry }

// CA is the Org CA.
func (m *Mastio) CA() *pki.CA { return m.ca }

// Audit is the audit log.
func (m *Mastio) Audit() *audit.Log { return m.audit }

// Nonce is the DPoP nonce to hand out now, or "" with nonces off.
func (m *Mastio) Nonce() string {
	if m.cfg.NonceMode == dpop.NonceOff {
		return ""
	}
	return m.nonces.Current(time.Now())
}

// JWKS returns the token verification keys and their ETag.
func (m *Mastio) JWKS() ([]byte, string) { return m.keys.JWKS() }

// RotateSigningKey stages and activates a new token signing key; the old
// one verifies for grace.
func (m *Mastio) RotateSigningKey(ctx context.Context, grace time.Duration, details map[string]any) (*token.Rotation, error) {
	return m.keys.Rotate(ctx, grace, ActorOf(ctx), details)
}

// ReadAudit calls fn with the audit records from seq from (1: the first),
// in order, until fn returns an error.
func (s *Shared) ReadAudit(ctx context.Context, from int64, fn func(audit.Record) error) error {
	s.audit.Flush() // the outcome rows of calls already answered
	return audit.Read(ctx, s.store, from, 0, fn)
}

// SigningKeys are the access-token signing keys that verify: the active
// one, and retired ones in their grace.
func (m *Mastio) SigningKeys() []*token.SigningKey { return m.keys.Keys() }
