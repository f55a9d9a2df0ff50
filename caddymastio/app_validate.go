package caddymastio

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
)

// minSecretLen is the shortest admin secret accepted.
const minSecretLen = 16

// knownDefaultSecrets are refused as admin secrets: they are in public
// documentation and example files.
var knownDefaultSecrets = []string{
	"change-me-in-production", "changeme", "change-me", "change_me", "changethis",
	"admin", "administrator", "password", "secret", "mastio", "default", "example",
	"admin-secret", "mastio-admin-secret", "0123456789abcdef", "1234567890123456",
}

// Validate rejects an invalid configuration; it checks what can be
// checked without touching the disk (Provision checks the data directory).
func (a *App) Validate() error {
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
	if a.AuditTimestampURL != "" {
		if u, err := url.Parse(a.AuditTimestampURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("audit_timestamp_url %q: want an http(s) URL", a.AuditTimestampURL)
		}
	}
	if a.AuditCheckpointInterval != 0 && time.Duration(a.AuditCheckpointInterval) < time.Minute {
		return errors.New("audit_checkpoint_interval must be at least 1m")
	}
	if a.RedisUnavailable != "" && a.RedisUnavailable != "closed" && a.RedisUnavailable != "degrade" {
		return fmt.Errorf("redis_unavailable %q: want closed or degrade", a.RedisUnavailable)
	}
	if a.Redis != "" && !strings.HasPrefix(a.Redis, "redis://") && !strings.HasPrefix(a.Redis, "rediss://") && !strings.HasPrefix(a.Redis, "{") {
		return fmt.Errorf("redis %q: want a redis:// or rediss:// URL", a.Redis)
	}
	if a.AuditVerifyInterval != 0 && time.Duration(a.AuditVerifyInterval) < time.Second {
		return errors.New("audit_verify_interval must be at least 1s")
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
	rates := map[string]mastio.Rate{}
	for route, r := range a.AnonymousRates {
		if r == nil {
			return fmt.Errorf("anonymous_rates: %s has no settings", route)
		}
		rates[route] = *r
	}
	if err := mastio.ValidateRates(rates); err != nil {
		return err
	}
	for name, s := range a.MCPServers {
		if s == nil {
			return fmt.Errorf("mcp_servers: %s has no settings", name)
		}
		if err := s.Validate(name); err != nil {
			return err
		}
	}
	return nil
}

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

// resolveAdminSecret applies the admin_secret rules documented on the
// field. The secret itself never appears in an error or a log line.
func (a *App) resolveAdminSecret(repl *caddy.Replacer) (string, error) {
	var secret string
	switch {
	case a.AdminSecret != "":
		v, err := repl.ReplaceOrErr(a.AdminSecret, true, true)
		if err != nil || strings.TrimSpace(v) == "" {
			return "", fmt.Errorf("admin_secret is configured but resolves to an empty value (is %s set in the environment? "+
				"e.g. caddy run --envfile proxy.env); refusing to start without an admin secret", placeholderNames(a.AdminSecret))
		}
		secret, a.adminSecretSource = v, "config"
	case os.Getenv(AdminSecretEnv) != "":
		secret, a.adminSecretSource = os.Getenv(AdminSecretEnv), "env "+AdminSecretEnv
	case a.KeyEncryptionKeyFile != "":
		return "", fmt.Errorf("instances sharing a database need the same admin secret: set admin_secret (or %s)", AdminSecretEnv)
	default:
		var err error
		if secret, _, err = a.shared.AdminSecretFromFile(); err != nil { // written when the state opens
			return "", fmt.Errorf("admin secret: %w", err)
		}
		a.adminSecretSource = "file " + filepath.Join(a.dataDir, "admin-secret")
	}
	return secret, checkSecretStrength(secret, a.adminSecretSource)
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
