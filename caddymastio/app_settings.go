package caddymastio

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// What a configuration hands the core: its settings, and the configuration
// documents a backup holds.

// backupConfig is the configuration a backup holds: this app's JSON and
// Caddy's autosaved configuration (the whole config last loaded), when
// Caddy keeps one.
func (a *App) backupConfig() map[string][]byte {
	out := map[string][]byte{}
	if b, err := json.MarshalIndent(a, "", "  "); err == nil {
		out["mastio-app.json"] = b
	}
	if b, err := os.ReadFile(caddy.ConfigAutosavePath); err == nil {
		out["caddy-autosave.json"] = b
	}
	return out
}

// settings are the core's settings of this configuration.
func (a *App) settings(repl *caddy.Replacer) (mastio.Settings, error) {
	s := mastio.Settings{TrustDomain: a.TrustDomain, AgentCertLifetime: time.Duration(a.AgentCertLifetime),
		EnrollmentTTL: time.Duration(a.EnrollmentTTL), TokenTTL: time.Duration(a.TokenTTL), AllowBearerTokens: a.AllowBearerTokens,
		IATWindow: time.Duration(a.DPoPIATWindow), ClockSkew: time.Duration(a.DPoPClockSkew), Policy: a.PolicyRules,
		Servers: a.MCPServers, AnonymousRates: map[string]mastio.Rate{},
		AuditSync: a.auditSync(), AuditCheckpointInterval: time.Duration(a.AuditCheckpointInterval),
		AuditVerifyInterval: time.Duration(a.AuditVerifyInterval),
		TimestampURL:        a.AuditTimestampURL, ClientIP: clientIP,
		RequestPath: originalPath, RequestID: requestID, BackupConfig: a.backupConfig}
	for route, r := range a.AnonymousRates {
		s.AnonymousRates[route] = *r
	}
	var err error
	if s.NonceMode, err = dpop.ParseNonceMode(a.DPoPNonce); err != nil {
		return s, err
	}
	if a.PublicURL != "" {
		raw, err := repl.ReplaceOrErr(a.PublicURL, true, true)
		if err != nil {
			return s, fmt.Errorf("public_url: %w", err)
		}
		if s.PublicURL, err = parsePublicURL(raw); err != nil {
			return s, fmt.Errorf("public_url: %w", err)
		}
	}
	secret, err := a.resolveAdminSecret(repl)
	if err != nil {
		return s, err
	}
	s.AdminSecret, err = a.shared.AdminSecretOf(secret)
	return s, err
}
