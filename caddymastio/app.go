// Package caddymastio holds the Caddy modules of caddy-mastio, thin over
// the Caddy-free core (package mastio): the mastio app, which opens the
// core's state once per data location and gives each configuration its
// view of it; the HTTP handlers mastio (the Mastio's endpoints, package
// endpoints), mastio_auth (a guard for any route) and mastio_mcp (the MCP
// policy filter, package gateway); and the TLS issuer, trust pool and
// client certificate verifier. Each module's Caddyfile parsing is beside
// it.
package caddymastio

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/keystores"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

func init() {
	caddy.RegisterModule(App{})
}

// Defaults of the mastio app.
const (
	DefaultDataDir = "./data"
	// AdminSecretEnv is read when admin_secret is not configured, so that
	// `caddy run --envfile proxy.env` works as the original deployment's
	// proxy.env did.
	AdminSecretEnv = "MCP_PROXY_ADMIN_SECRET"
)

// locations holds the core's state of each data location in use, keyed
// by database path: a reload provisions the new configuration while the
// old one still serves, and both must share one database handle and one
// audit writer (two writers on one audit chain would fork it).
var locations = caddy.NewUsagePool()

// location is a Shared in the UsagePool.
type location struct{ *mastio.Shared }

// Destruct closes the location when its last configuration is cleaned up.
func (l location) Destruct() error { return l.Close() }

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

	// The database: a SQLite file path (default: <data_dir>/mastio.db), or
	// a postgres:// URL (placeholders such as {env.MASTIO_DATABASE_URL}
	// keep its password out of the config; logs and the audit log show the
	// URL without it).
	Database string `json:"database,omitempty"`

	// A file holding the key-encryption key (32 random bytes, base64 or
	// hex; mode 0600) of a Postgres database several instances share:
	// with it, the Org CA's and intermediate's keys, the signing keys and
	// upstream credentials live in the database sealed under this key
	// (AES-256-GCM), the first instance creates them and the others use
	// them. Give every instance the same key. Requires admin_secret (or
	// MCP_PROXY_ADMIN_SECRET): a generated one would differ per instance.
	KeyEncryptionKeyFile string `json:"key_encryption_key_file,omitempty"`

	// Where the Org CA's and intermediate's private keys live, when not in
	// data_dir/pki: a module of the mastio.ca_key_stores family, "vault"
	// (a HashiCorp Vault KV v2 secret) or, in a build with the pkcs11 tag,
	// "pkcs11" (an HSM the keys never leave). The certificates stay in
	// data_dir/pki. Default: files in data_dir/pki (or, with
	// key_encryption_key_file, sealed in the database).
	CAKeyStoreRaw json.RawMessage `json:"ca_key_store,omitempty" caddy:"namespace=mastio.ca_key_stores inline_key=store"`

	// The Redis the instances of a deployment share (redis://...;
	// placeholders allowed): DPoP proofs and client assertions used on one
	// instance are refused on all, and DPoP nonces and login challenges are
	// good on all. Default: none, this process's memory.
	Redis string `json:"redis,omitempty"`

	// What happens while Redis cannot be reached: "closed" (default:
	// requests that need a replay check are refused with 503) or "degrade"
	// (each instance checks alone, with a warning and
	// caddy_mastio_redis_degraded_total).
	RedisUnavailable string `json:"redis_unavailable,omitempty"`

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
	MCPServers map[string]*mastio.Server `json:"mcp_servers,omitempty"`

	// Limits on unauthenticated requests, by route: "enrollment" (5 per
	// minute per address, 120 in all), "enrollment_status" (60, 3000) and
	// "token" for token requests without a client certificate (300, 6000).
	// Over a limit the answer is 429 with Retry-After, counted in
	// caddy_mastio_rate_limited_total{route,scope}.
	AnonymousRates map[string]*mastio.Rate `json:"anonymous_rates,omitempty"`

	// Deprecated, and without effect: accepted so that configurations
	// that set it still load (a warning says so). A forwarded MCP call's
	// audit row is now committed while its upstream works, so no commit
	// waits for rows to come.
	AuditCommitDelay caddy.Duration `json:"audit_commit_delay,omitempty"`

	// How often the audit chain's head is signed into the chain
	// (audit.checkpoint rows, also written at shutdown), when it grew.
	// Default: 1h; at least 1m.
	AuditCheckpointInterval caddy.Duration `json:"audit_checkpoint_interval,omitempty"`

	// How often the rows appended since the last walk are verified in the
	// background (links and hashes; the whole chain, from its archive
	// anchor, at start, daily and while a break is reported). A break is
	// logged, counted (caddy_mastio_audit_chain_breaks_total) and fails
	// /readyz until a walk passes again. Default: 1m; at least 1s.
	AuditVerifyInterval caddy.Duration `json:"audit_verify_interval,omitempty"`

	// An RFC 3161 timestamp authority (http or https URL) that timestamps
	// audit bundles (POST /v1/admin/audit/bundle). Default: none.
	AuditTimestampURL string `json:"audit_timestamp_url,omitempty"`

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
	logger            *zap.Logger
	accessLog         *zap.Logger // Caddy's access logger, for entries with credentials redacted
	dataDir           string
	dbPath            string
	adminSecretSource string
	shared            *mastio.Shared
	m                 *mastio.Mastio
	released          bool // Cleanup gave back the reference to shared
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mastio",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision resolves the configuration and attaches this configuration's
// view of the location's state, which it prepares on first use (reading
// only: see Start).
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.accessLog = ctx.Logger(httpLogModule{}).Named("log.access")
	if err := a.Validate(); err != nil {
		return err
	}
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := registerMetrics(reg, append(mastio.Collectors(), gateway.Collectors()...)); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
	}
	repl := caddy.NewReplacer()
	if err := a.resolvePaths(repl); err != nil {
		return err
	}
	var caKeys keystores.CAKeyStore
	if a.CAKeyStoreRaw != nil {
		mod, err := ctx.LoadModule(a, "CAKeyStoreRaw")
		if err != nil {
			return fmt.Errorf("ca_key_store: %w", err)
		}
		caKeys = mod.(keystores.CAKeyStore)
	}
	val, _, err := locations.LoadOrNew(a.dbPath, func() (caddy.Destructor, error) {
		loc := mastio.Location{DataDir: a.dataDir, Database: mastio.Database(a.dbPath), RedisDegrade: a.RedisUnavailable == "degrade"}
		if caKeys != nil {
			var err error
			if loc.CAKeys, err = caKeys.CAKeys(); err != nil {
				return nil, fmt.Errorf("ca_key_store: %w", err)
			}
		}
		if a.Redis != "" {
			var err error
			if loc.Redis, err = repl.ReplaceOrErr(a.Redis, true, true); err != nil {
				return nil, fmt.Errorf("redis: %w", err)
			}
		}
		if a.KeyEncryptionKeyFile != "" {
			kekPath, err := repl.ReplaceOrErr(a.KeyEncryptionKeyFile, true, true)
			if err != nil {
				return nil, fmt.Errorf("key_encryption_key_file: %w", err)
			}
			if loc.KEK, err = mastio.ReadKEK(kekPath); err != nil {
				return nil, err
			}
		}
		s, err := mastio.Prepare(loc, a.OrgID, a.logger)
		if err != nil {
			return nil, err
		}
		return location{s}, nil
	})
	if err != nil {
		return fmt.Errorf("mastio: %w", err)
	}
	a.shared = val.(location).Shared
	if a.shared.DataDir() != a.dataDir {
		return fmt.Errorf("database %s is already in use with data_dir %s; one database belongs to one data_dir",
			mastio.Database(a.dbPath).Location(), a.shared.DataDir())
	}
	if a.OrgID != "" && a.OrgID != a.shared.OrgID() {
		return fmt.Errorf("org_id %q differs from the org id %q this data directory was created with; "+
			"an org id cannot change (every agent id and certificate carries it): remove org_id or set it to %q",
			a.OrgID, a.shared.OrgID(), a.shared.OrgID())
	}
	settings, err := a.settings(repl)
	if err != nil {
		return err
	}
	if a.m, err = a.shared.With(settings, a.logger); err != nil {
		return err
	}
	if a.AuditCommitDelay != 0 {
		a.logger.Warn("audit_commit_delay is deprecated and has no effect: a forwarded MCP call's audit row is committed " +
			"while its upstream works; remove it from the configuration")
	}
	if a.AllowBearerTokens {
		a.logger.Warn("allow_bearer_tokens is on: token requests without a DPoP proof get unbound bearer tokens, " +
			"which anyone who obtains them can use; turn it off once every client sends DPoP proofs")
	}
	return nil
}

// resolvePaths expands placeholders in data_dir and database.
func (a *App) resolvePaths(repl *caddy.Replacer) error {
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
		a.dbPath = dbPath // the URL, password and all: only its Location is ever shown
		return nil
	}
	if a.dbPath, err = filepath.Abs(dbPath); err != nil {
		return fmt.Errorf("database %q: %w", dbPath, err)
	}
	return nil
}

// registerMetrics registers the collectors with a config's registry
// (counts live in the collectors, across reloads).
func registerMetrics(reg *prometheus.Registry, collectors []prometheus.Collector) error {
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// Mastio is this configuration's view of the core, for the other modules.
func (a *App) Mastio() *mastio.Mastio { return a.m }

// ready opens the location's state (once: at Start, or on the first
// request or handshake that comes before it). Provision only prepares, so
// that checking a config writes nothing.
func (a *App) ready() error { return a.shared.Open() }

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

// serve runs a handler of this app's modules: with credentials kept out of
// the logs (see serveRedacted) and only once the state is open.
func (a *App) serve(w http.ResponseWriter, r *http.Request, fn func(http.ResponseWriter, *http.Request) error) error {
	return a.serveRedacted(w, r, func(w http.ResponseWriter, r *http.Request) error {
		if !a.readyOrRefuse(w) {
			return nil
		}
		return fn(w, r)
	})
}

func (a *App) auditSync() audit.Sync {
	if a.AuditSync == "os" {
		return audit.SyncOS
	}
	return audit.SyncFull
}

// Start opens the state, applies the audit settings and audits the start
// of the process (once) and every config load.
func (a *App) Start() error {
	if err := a.ready(); err != nil {
		return fmt.Errorf("mastio: %w", err)
	}
	if a.auditSync() == audit.SyncOS {
		a.logger.Warn("audit_sync is os: audit rows are committed to the operating system, not fsynced, before answers are sent; " +
			"they survive a crash or restart of Caddy, but a power loss or kernel crash may lose the last ones")
	}
	if err := a.m.Start(context.Background(), map[string]any{"admin_secret_source": a.adminSecretSource}); err != nil {
		return fmt.Errorf("mastio: %w", err)
	}
	a.logger.Info("mastio ready",
		zap.String("org_id", a.m.OrgID()),
		zap.String("trust_domain", a.m.Settings().TrustDomain),
		zap.String("data_dir", a.dataDir),
		zap.String("database", mastio.Database(a.dbPath).Location()),
		zap.String("org_ca", filepath.Join(a.dataDir, "pki", pki.RootCertFile)),
		zap.String("admin_secret_source", a.adminSecretSource))
	return nil
}

// Stop audits a process shutdown. On a reload the old app is stopped
// after the new one has started; that is not a shutdown.
func (a *App) Stop() error {
	if caddy.Exiting() && a.m != nil {
		if err := a.m.AuditShutdown(context.Background()); err != nil {
			a.logger.Error("auditing system stop", zap.Error(err))
		}
	}
	return nil
}

// Cleanup releases this config's reference to the location's state. The
// view stays usable: a request of the old config may still be finishing.
func (a *App) Cleanup() error {
	if a.shared != nil && !a.released {
		a.released = true
		if _, err := locations.Delete(a.dbPath); err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
