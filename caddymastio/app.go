// Package caddymastio holds the Caddy modules of caddy-mastio: the mastio
// app and the HTTP, TLS and admin modules that use it. The domain logic
// lives in the sub-packages (store, audit, pki, token, ...); the modules
// here are the glue.
package caddymastio

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

func init() {
	caddy.RegisterModule(App{})
}

// Defaults of the mastio app.
const (
	DefaultDataDir     = "./data"
	DefaultTrustDomain = "mastio.local"
	// AdminSecretEnv is read when admin_secret is not configured, so that
	// `caddy run --envfile proxy.env` works as the original deployment's
	// proxy.env did.
	AdminSecretEnv = "MCP_PROXY_ADMIN_SECRET"
	minSecretLen   = 16
)

// knownDefaultSecrets are refused as admin secrets: they are in public
// documentation and example files.
var knownDefaultSecrets = []string{
	"change-me-in-production", "changeme", "change-me", "change_me", "changethis",
	"admin", "administrator", "password", "secret", "mastio", "default", "example",
	"admin-secret", "mastio-admin-secret", "0123456789abcdef", "1234567890123456",
}

// App is the Mastio: one per process, it owns the database, the Org CA,
// the access-token signing keys and the audit log that every other
// caddy-mastio module uses. Configure it with the global option `mastio`;
// if a config uses a mastio module without configuring the app, it runs
// with the defaults below.
//
// On first start it creates data_dir (mode 0700) with the SQLite database,
// the Org CA under pki/ (root EC P-256 valid 15 years, intermediate 5 years,
// keys 0600) and the first token signing key under keys/. Later starts
// reuse them; a data directory whose CA does not match its database is
// refused rather than repaired.
//
// State survives config reloads: two configs pointing at the same database
// share one handle and one audit writer.
type App struct {
	// Directory for the database, the Org CA and keys. Placeholders such as
	// {env.MASTIO_DATA_DIR} are expanded. Default: ./data (relative to the
	// working directory of the Caddy process).
	DataDir string `json:"data_dir,omitempty"`

	// The database: a SQLite file path. Default: <data_dir>/mastio.db.
	// postgres:// URLs are reserved for the Postgres store, which this build
	// does not include yet; they are refused with a clear error.
	Database string `json:"database,omitempty"`

	// The organisation id: the <org> in agent ids (<org>::<name>) and SPIFFE
	// IDs. 1-64 characters of [a-zA-Z0-9._-]. Default: the first 16 hex
	// digits of the SHA-256 of the Org root's public key. It is fixed at
	// first start; a later config with a different value is refused.
	OrgID string `json:"org_id,omitempty"`

	// The SPIFFE trust domain of agent identities
	// (spiffe://<trust_domain>/<org>/<name>). Default: mastio.local
	TrustDomain string `json:"trust_domain,omitempty"`

	// The external base URL agents use to reach this Mastio, e.g.
	// https://mastio.example.com:9443. It is the reference for DPoP htu
	// checks and for URLs the Mastio hands out. Only scheme, host and port
	// are allowed. Default: derived from each request.
	PublicURL string `json:"public_url,omitempty"`

	// The administrator secret expected in the X-Admin-Secret header.
	// Use a placeholder, e.g. {env.MCP_PROXY_ADMIN_SECRET}, never a literal
	// (the config is readable through the admin API). It must be at least 16
	// characters and not a published default; an empty value refuses to
	// start. When not configured: the MCP_PROXY_ADMIN_SECRET environment
	// variable if set, otherwise a random secret generated once into
	// <data_dir>/admin-secret (mode 0600).
	AdminSecret string `json:"admin_secret,omitempty"`

	// Validity of agent certificates issued at enrollment, creation and
	// rotation. Default: 365d. Never beyond the intermediate's expiry.
	AgentCertLifetime caddy.Duration `json:"agent_cert_lifetime,omitempty"`

	// How long an enrollment session waits for an administrator's decision
	// before it expires. Default: 30m.
	EnrollmentTTL caddy.Duration `json:"enrollment_ttl,omitempty"`

	// Lifetime of access tokens minted at /v1/auth/token. Default: 5m.
	TokenTTL caddy.Duration `json:"token_ttl,omitempty"`

	// Mint tokens without a DPoP proof (unbound "Bearer" tokens) when a
	// client sends none. Off by default: a token request without a DPoP
	// proof is refused. Turning it on is logged as a warning at every
	// config load, because a stolen unbound token works for anyone.
	AllowBearerTokens bool `json:"allow_bearer_tokens,omitempty"`

	// Server nonces in DPoP proofs (RFC 9449 §8, §9): "required" (default:
	// every proof must carry a nonce from a DPoP-Nonce header, which bounds
	// replays by server time on every instance), "optional" (checked when
	// present) or "off".
	DPoPNonce string `json:"dpop_nonce,omitempty"`

	// How old a DPoP proof's iat may be. Default: 60s.
	DPoPIATWindow caddy.Duration `json:"dpop_iat_window,omitempty"`

	// How far in the future a DPoP proof's iat may be, for clients whose
	// clock runs ahead. Default: 5s (the original Mastio's
	// DPOP_CLOCK_SKEW); at most 60s. After a restart, proofs without a
	// server nonce are accepted only once they are this much younger than
	// the process (see dpop_nonce).
	DPoPClockSkew caddy.Duration `json:"dpop_clock_skew,omitempty"`

	// MCP policy rules, one per line (see package policy):
	// "<allow|deny> <principal> <action> <server>/<name>". They apply
	// together with the rules managed through the admin API
	// (/v1/admin/policies); a deny in either wins, and calls no rule
	// allows are denied.
	PolicyRules string `json:"policy,omitempty"`

	// MCP servers the /v1/mcp aggregator serves, by name (the <server> of
	// policy resources). More can be registered at runtime through the
	// admin API (/v1/admin/mcp-servers).
	MCPServers map[string]*MCPServer `json:"mcp_servers,omitempty"`

	// Limits on unauthenticated requests, by route: "enrollment" (5 per
	// minute per address, 120 in all), "enrollment_status" (60, 3000) and
	// "token" for token requests without a client certificate (300, 6000).
	// Over a limit the answer is 429 with Retry-After, counted in
	// caddy_mastio_rate_limited_total{route,scope}.
	AnonymousRates map[string]*AnonymousRate `json:"anonymous_rates,omitempty"`

	// How long an audit commit made under load may wait for the rows of
	// MCP calls whose upstream is still answering, so that one commit (one
	// fsync) serves them all. Every row is still committed before its answer
	// is sent (see audit_sync); a call made while the gateway is otherwise
	// idle is never delayed. Default: 1ms; a negative value ("off" in the
	// Caddyfile) turns the wait off.
	AuditCommitDelay caddy.Duration `json:"audit_commit_delay,omitempty"`

	// How durable an audit row is when the answer that depends on it is
	// sent: "full" (default: the commit is fsynced, so the row survives a
	// power loss) or "os" (the commit is handed to the operating system
	// without waiting for the disk: the row survives a crash or restart of
	// Caddy, but a power loss or kernel crash may lose the last commits;
	// the chain stays consistent and verifiable). "os" removes the disk
	// flush from every MCP call's latency; choosing it is logged as a
	// warning at every config load.
	AuditSync string `json:"audit_sync,omitempty"`

	// runtime
	ctx               caddy.Context
	logger            *zap.Logger
	refusalLog        *zap.Logger // sampled: anonymous refusals
	accessLog         *zap.Logger // Caddy's access logger, for entries with credentials redacted
	dataDir           string
	dbPath            string
	trustDomain       string
	publicURL         *url.URL
	adminSecret       string
	adminSecretSource string
	secret            *admin.Secret
	adminAPI          *admin.API
	nonceMode         dpop.NonceMode
	issuer            string
	policyRules       []policy.Rule
	state             *state
	stateKey          string
	readyOnce         *sync.Once // builds adminAPI once the state is open
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mastio",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision resolves the configuration and attaches the shared state,
// creating the data directory, database and Org CA on first use.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger()
	a.readyOnce = new(sync.Once)
	a.refusalLog = sampledLogger(a.logger)
	a.accessLog = ctx.Logger(httpLogModule{}).Named("log.access")
	if err := a.validateStatic(); err != nil {
		return err
	}
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := registerMetrics(reg); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	repl := caddy.NewReplacer()

	dataDir, err := repl.ReplaceOrErr(a.DataDir, true, false)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	if a.dataDir, err = filepath.Abs(dataDir); err != nil {
		return fmt.Errorf("data_dir %q: %w", dataDir, err)
	}
	dbPath, err := repl.ReplaceOrErr(a.Database, true, false)
	if err != nil {
		return fmt.Errorf("database: %w", err)
	}
	if dbPath == "" {
		dbPath = filepath.Join(a.dataDir, "mastio.db")
	}
	if isPostgresURL(dbPath) {
		return errors.New("database: postgres:// URLs need the Postgres store, which this build does not include yet; use a SQLite file path")
	}
	if a.dbPath, err = filepath.Abs(dbPath); err != nil {
		return fmt.Errorf("database %q: %w", dbPath, err)
	}
	a.trustDomain = a.TrustDomain
	if a.trustDomain == "" {
		a.trustDomain = DefaultTrustDomain
	}
	if a.PublicURL != "" {
		raw, err := repl.ReplaceOrErr(a.PublicURL, true, true)
		if err != nil {
			return fmt.Errorf("public_url: %w", err)
		}
		if a.publicURL, err = parsePublicURL(raw); err != nil {
			return fmt.Errorf("public_url: %w", err)
		}
	}

	val, _, err := states.LoadOrNew(a.dbPath, func() (caddy.Destructor, error) {
		return prepareState(a.dataDir, a.dbPath, a.OrgID, a.logger)
	})
	if err != nil {
		return fmt.Errorf("mastio: %w", err)
	}
	a.state, a.stateKey = val.(*state), a.dbPath
	if a.state.dataDir != a.dataDir {
		return fmt.Errorf("database %s is already in use with data_dir %s; one database belongs to one data_dir",
			a.dbPath, a.state.dataDir)
	}
	if a.OrgID != "" && a.OrgID != a.state.orgID {
		return fmt.Errorf("org_id %q differs from the org id %q this data directory was created with; "+
			"an org id cannot change (every agent id and certificate carries it): remove org_id or set it to %q",
			a.OrgID, a.state.orgID, a.state.orgID)
	}
	if err := a.resolveAdminSecret(repl); err != nil {
		return err
	}
	if a.secret, err = admin.NewSecret(a.adminSecret); err != nil {
		return err
	}
	if a.nonceMode, err = dpop.ParseNonceMode(a.DPoPNonce); err != nil {
		return err
	}
	if a.policyRules, err = policy.Parse("config", a.PolicyRules); err != nil {
		return err
	}
	a.issuer = "urn:mastio:" + a.state.orgID
	if a.publicURL != nil {
		a.issuer = a.publicURL.String()
	}
	if a.AllowBearerTokens {
		a.logger.Warn("allow_bearer_tokens is on: token requests without a DPoP proof get unbound bearer tokens, " +
			"which anyone who obtains them can use; turn it off once every client sends DPoP proofs")
	}
	return nil
}

// ready opens the state (once per data location: Start, or the first
// request or handshake that comes before it) and builds what runs on it.
// Provision only prepares (see prepareState), so that checking a config
// writes nothing.
func (a *App) ready() error {
	if err := a.state.open(); err != nil {
		return err
	}
	a.readyOnce.Do(a.buildAdminAPI)
	return nil
}

// readyOrRefuse opens the state for a request, or answers 503 when it
// cannot be opened.
func (a *App) readyOrRefuse(w http.ResponseWriter) bool {
	if err := a.ready(); err != nil {
		a.logger.Error("the Mastio's state cannot be opened", zap.Error(err))
		httpjson.Error(w, http.StatusServiceUnavailable, "not_ready", "the Mastio cannot open its data; see its log")
		return false
	}
	return true
}

func (a *App) buildAdminAPI() {
	a.adminAPI = &admin.API{
		Registry:       a.state.registry,
		Audit:          a.state.audit,
		Logger:         a.logger.Named("admin"),
		Secret:         func() *admin.Secret { return a.secret },
		Policy:         a.Policy,
		Failures:       a.state.adminFailLimit,
		GlobalFailures: a.state.adminFailGlobal,
		RateLimited: func(scope string) {
			rateLimited.WithLabelValues("admin_auth", scope).Inc()
		},
		ClientIP: clientIP,
		RotateKeys: func(ctx context.Context, grace time.Duration, details map[string]any) (any, error) {
			return a.state.keys.Rotate(ctx, a.state.audit, grace, a.state.store.CheckFile, "admin", details)
		},
		Policies:  a,
		Upstreams: a,
	}
}

// Policy returns the issuance settings of this config.
func (a *App) Policy() registry.Policy {
	return registry.Policy{
		TrustDomain:       a.trustDomain,
		AgentCertLifetime: time.Duration(a.AgentCertLifetime),
		EnrollmentTTL:     time.Duration(a.EnrollmentTTL),
	}
}

// resolveAdminSecret applies the admin_secret rules documented on the
// field. The secret itself never appears in an error or a log line.
func (a *App) resolveAdminSecret(repl *caddy.Replacer) error {
	switch {
	case a.AdminSecret != "":
		v, err := repl.ReplaceOrErr(a.AdminSecret, true, true)
		if err != nil || strings.TrimSpace(v) == "" {
			return fmt.Errorf("admin_secret is configured but resolves to an empty value (is %s set in the environment? "+
				"e.g. caddy run --envfile proxy.env); refusing to start without an admin secret", placeholderNames(a.AdminSecret))
		}
		a.adminSecret, a.adminSecretSource = v, "config"
	case os.Getenv(AdminSecretEnv) != "":
		a.adminSecret, a.adminSecretSource = os.Getenv(AdminSecretEnv), "env "+AdminSecretEnv
	default:
		secret, _, err := a.state.adminSecretFromFile() // written when the state opens
		if err != nil {
			return fmt.Errorf("admin secret: %w", err)
		}
		a.adminSecret, a.adminSecretSource = secret, "file "+filepath.Join(a.dataDir, "admin-secret")
	}
	return checkSecretStrength(a.adminSecret, a.adminSecretSource)
}

func checkSecretStrength(secret, source string) error {
	s := strings.TrimSpace(secret)
	if len(s) < minSecretLen {
		return fmt.Errorf("admin secret from %s is too short (%d characters): use at least %d, e.g. openssl rand -hex 32",
			source, len(s), minSecretLen)
	}
	for _, d := range knownDefaultSecrets {
		if strings.EqualFold(s, d) {
			return fmt.Errorf("admin secret from %s is a published default value: generate one, e.g. openssl rand -hex 32", source)
		}
	}
	if strings.Count(s, s[:1]) == len(s) {
		return fmt.Errorf("admin secret from %s is one repeated character: generate one, e.g. openssl rand -hex 32", source)
	}
	return nil
}

// placeholderNames returns the placeholders in s, for error messages that
// must not echo a literal secret.
func placeholderNames(s string) string {
	var names []string
	for {
		i := strings.IndexByte(s, '{')
		j := strings.IndexByte(s, '}')
		if i < 0 || j < i {
			break
		}
		names = append(names, s[i:j+1])
		s = s[j+1:]
	}
	if len(names) == 0 {
		return "the value"
	}
	return strings.Join(names, ", ")
}

// defaultAuditCommitDelay: with 24 concurrent clients on 2 cores it takes
// the rows per commit from about 4.8 to 9.3 and gains 5-7% throughput.
const defaultAuditCommitDelay = time.Millisecond

func (a *App) auditCommitDelay() time.Duration {
	switch {
	case a.AuditCommitDelay == 0:
		return defaultAuditCommitDelay
	case a.AuditCommitDelay < 0:
		return 0
	}
	return time.Duration(a.AuditCommitDelay)
}

func (a *App) auditSync() audit.Sync {
	if a.AuditSync == "os" {
		return audit.SyncOS
	}
	return audit.SyncFull
}

// validateStatic checks what can be checked without touching the disk.
func (a *App) validateStatic() error {
	if a.OrgID != "" {
		if err := pki.ValidateName("org_id", a.OrgID); err != nil {
			return err
		}
	}
	if a.TrustDomain != "" {
		if err := pki.ValidateTrustDomain(a.TrustDomain); err != nil {
			return fmt.Errorf("trust_domain: %w", err)
		}
	}
	if a.PublicURL != "" && !strings.Contains(a.PublicURL, "{") {
		if _, err := parsePublicURL(a.PublicURL); err != nil {
			return fmt.Errorf("public_url: %w", err)
		}
	}
	if a.AdminSecret != "" && !strings.Contains(a.AdminSecret, "{") {
		if err := checkSecretStrength(a.AdminSecret, "config"); err != nil {
			return err
		}
	}
	if a.AuditSync != "" && a.AuditSync != "full" && a.AuditSync != "os" {
		return fmt.Errorf("audit_sync %q: want full or os", a.AuditSync)
	}
	if time.Duration(a.AuditCommitDelay) > 100*time.Millisecond {
		return errors.New("audit_commit_delay must be at most 100ms (it is added to calls under load); use off to disable it")
	}
	if a.AgentCertLifetime < 0 || (a.AgentCertLifetime > 0 && time.Duration(a.AgentCertLifetime) < time.Hour) {
		return errors.New("agent_cert_lifetime must be at least 1h")
	}
	if a.EnrollmentTTL < 0 || (a.EnrollmentTTL > 0 && time.Duration(a.EnrollmentTTL) < time.Minute) ||
		time.Duration(a.EnrollmentTTL) > 7*24*time.Hour {
		return errors.New("enrollment_ttl must be between 1m and 7d")
	}
	if a.TokenTTL < 0 || (a.TokenTTL > 0 && time.Duration(a.TokenTTL) < 10*time.Second) || time.Duration(a.TokenTTL) > 24*time.Hour {
		return errors.New("token_ttl must be between 10s and 24h")
	}
	if a.DPoPIATWindow < 0 || (a.DPoPIATWindow > 0 && time.Duration(a.DPoPIATWindow) < 5*time.Second) ||
		time.Duration(a.DPoPIATWindow) > 10*time.Minute {
		return errors.New("dpop_iat_window must be between 5s and 10m")
	}
	if a.DPoPClockSkew < 0 || time.Duration(a.DPoPClockSkew) > time.Minute {
		return errors.New("dpop_clock_skew must be between 0s and 60s")
	}
	if _, err := dpop.ParseNonceMode(a.DPoPNonce); err != nil {
		return err
	}
	if _, err := policy.Parse("config", a.PolicyRules); err != nil {
		return err
	}
	if err := validateAnonymousRates(a.AnonymousRates); err != nil {
		return err
	}
	for name, s := range a.MCPServers {
		if s == nil {
			return fmt.Errorf("mcp_servers: %s has no settings", name)
		}
		if err := s.validate(name); err != nil {
			return err
		}
	}
	return nil
}

// Validate rejects invalid configuration.
func (a *App) Validate() error { return a.validateStatic() }

// parsePublicURL accepts https://host[:port] (http only for loopback
// development) with no path, query or fragment.
func parsePublicURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSuffix(raw, "/"))
	if err != nil {
		return nil, err
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, fmt.Errorf("%q: scheme must be https", raw)
	}
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: want scheme://host[:port] only", raw)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	u.Host = strings.ToLower(u.Host)
	u.Path = ""
	return u, nil
}

func isPostgresURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// Start audits the start of the process (once) and every config load.
func (a *App) Start() error {
	ctx := context.Background()
	if err := a.ready(); err != nil {
		return fmt.Errorf("mastio: %w", err)
	}
	// The audit settings belong to the writer shared by every config, so
	// they change here, once this config is the one that runs (not in
	// Provision, which a reload that fails later would also have run).
	a.state.audit.SetCommitDelay(a.auditCommitDelay())
	if a.auditSync() == audit.SyncOS {
		a.logger.Warn("audit_sync is os: audit rows are committed to the operating system, not fsynced, before answers are sent; " +
			"they survive a crash or restart of Caddy, but a power loss or kernel crash may lose the last ones")
	}
	a.state.audit.SetSync(a.auditSync())
	var err error
	a.state.startOnce.Do(func() {
		_, err = a.state.audit.Append(ctx, audit.Event{Type: "system.start", Actor: "system", Subject: a.state.orgID,
			Details: map[string]any{"version": Version(), "pid": os.Getpid(), "data_dir": a.dataDir, "database": a.dbPath}})
	})
	if err != nil {
		return fmt.Errorf("auditing system start: %w", err)
	}
	if _, err := a.state.audit.Append(ctx, audit.Event{Type: "config.load", Actor: "system", Subject: a.state.orgID,
		Details: map[string]any{
			"org_id":              a.state.orgID,
			"trust_domain":        a.trustDomain,
			"public_url":          a.PublicURLString(),
			"admin_secret_source": a.adminSecretSource,
			"audit_sync":          a.auditSync().String(),
		}}); err != nil {
		return fmt.Errorf("auditing config load: %w", err)
	}
	a.logger.Info("mastio ready",
		zap.String("org_id", a.state.orgID),
		zap.String("trust_domain", a.trustDomain),
		zap.String("data_dir", a.dataDir),
		zap.String("database", a.dbPath),
		zap.String("org_ca", filepath.Join(a.dataDir, "pki", pki.RootCertFile)),
		zap.String("admin_secret_source", a.adminSecretSource))
	return nil
}

// Stop audits a process shutdown. On a reload the old app is stopped
// after the new one has started; that is not a shutdown.
func (a *App) Stop() error {
	if caddy.Exiting() && a.state != nil {
		if _, err := a.state.audit.Append(context.Background(), audit.Event{Type: "system.stop", Actor: "system",
			Subject: a.state.orgID, Details: map[string]any{"pid": os.Getpid()}}); err != nil {
			a.logger.Error("auditing system stop", zap.Error(err))
		}
	}
	return nil
}

// Cleanup releases this config's reference to the shared state.
func (a *App) Cleanup() error {
	if a.stateKey != "" {
		a.stateKey = ""
		if _, err := states.Delete(a.dbPath); err != nil {
			return err
		}
	}
	return nil
}

// OrgIDValue returns the organisation id in force.
func (a *App) OrgIDValue() string { return a.state.orgID }

// TrustDomainValue returns the trust domain in force.
func (a *App) TrustDomainValue() string { return a.trustDomain }

// PublicURLString returns the configured public URL or "".
func (a *App) PublicURLString() string {
	if a.publicURL == nil {
		return ""
	}
	return a.publicURL.String()
}

// tokenTTL is the access-token lifetime in force.
func (a *App) tokenTTL() time.Duration {
	if a.TokenTTL > 0 {
		return time.Duration(a.TokenTTL)
	}
	return 5 * time.Minute
}

// clockSkew is how far in the future a DPoP proof's iat may be.
func (a *App) clockSkew() time.Duration {
	if a.DPoPClockSkew > 0 {
		return time.Duration(a.DPoPClockSkew)
	}
	return dpop.DefaultMaxSkew
}

// iatWindow is how old a DPoP proof may be.
func (a *App) iatWindow() time.Duration {
	if a.DPoPIATWindow > 0 {
		return time.Duration(a.DPoPIATWindow)
	}
	return 60 * time.Second
}

// Issuer is the iss (and aud) of the access tokens of this Mastio: the
// public_url, or urn:mastio:<org_id> when none is configured.
func (a *App) Issuer() string { return a.issuer }

// Registry returns the agent registry.
func (a *App) Registry() *registry.Registry { return a.state.registry }

// CA returns the Org CA.
func (a *App) CA() *pki.CA { return a.state.ca }

// Audit returns the audit log.
func (a *App) Audit() *audit.Log { return a.state.audit }

// Version is the caddy-mastio module version baked into the binary.
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == modulePath {
				if m.Replace != nil && m.Replace.Version != "" {
					return m.Replace.Version
				}
				return m.Version
			}
		}
		if bi.Main.Path == modulePath && bi.Main.Version != "" {
			return bi.Main.Version
		}
	}
	return "(devel)"
}

const modulePath = "github.com/caddy-mastio/caddy-mastio"

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
