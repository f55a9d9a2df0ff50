package caddymastio

import (
	"errors"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("mastio", parseGlobalOption)
}

// parseGlobalOption sets up the mastio app from the global options block.
// Syntax:
//
//	mastio {
//	    data_dir     <path>
//	    database     <sqlite-path>|postgres://...
//	    key_encryption_key_file <path>
//	    ca_key_store <vault|pkcs11> {
//	        <the store's options>
//	    }
//	    redis <redis://...>
//	    redis_unavailable closed|degrade
//	    org_id       <id>
//	    trust_domain <domain>
//	    public_url   <https://host[:port]>
//	    admin_secret <secret-placeholder>
//	    agent_cert_lifetime <duration>
//	    enrollment_ttl      <duration>
//	    token_ttl           <duration>
//	    dpop_iat_window     <duration>
//	    dpop_clock_skew     <duration>
//	    dpop_nonce          off|optional|required
//	    allow_bearer_tokens
//	    policy {
//	        <allow|deny> <principal> <action> <server>/<name>
//	        ...
//	    }
//	    mcp_server <name> {
//	        url                <https://host/path>
//	        header             <name> <value-or-placeholder>
//	        bearer_secret      <key-store-name>
//	        oauth {
//	            token_url          <https://auth/token>
//	            client_id          <id>
//	            client_secret      <placeholder-or-secret>
//	            client_secret_name <key-store-name>
//	            scope              <scope>...
//	            resource           <uri>
//	        }
//	        client_certificate
//	        ca_file            <pem-file>
//	        prefix             <tool-prefix>|-
//	        timeout            <duration>
//	        max_argument_bytes <bytes>
//	        agent_rate         <calls per minute>|off
//	        item_rate          <calls per minute>|off
//	    }
//	    anonymous_rate enrollment|enrollment_status|token <per-ip|off> <global|off>
//	    audit_sync         full|os
//	    audit_commit_delay <duration>|off   (deprecated: no effect)
//	    audit_checkpoint_interval <duration>
//	    audit_verify_interval <duration>
//	    audit_timestamp_url <rfc3161-url>
//	}
//
// anonymous_rate is in requests per minute and may be repeated, once per
// route.
//
// Every option is optional; see the App type for defaults.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the mastio global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "mastio", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens; the syntax is
// that of the mastio global option (see parseGlobalOption).
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		var target *string
		var durTarget *caddy.Duration
		switch opt {
		case "data_dir":
			target = &a.DataDir
		case "database":
			target = &a.Database
		case "key_encryption_key_file":
			target = &a.KeyEncryptionKeyFile
		case "redis":
			target = &a.Redis
		case "redis_unavailable":
			target = &a.RedisUnavailable
		case "org_id":
			target = &a.OrgID
		case "trust_domain":
			target = &a.TrustDomain
		case "public_url":
			target = &a.PublicURL
		case "admin_secret":
			target = &a.AdminSecret
		case "agent_cert_lifetime":
			durTarget = &a.AgentCertLifetime
		case "enrollment_ttl":
			durTarget = &a.EnrollmentTTL
		case "token_ttl":
			durTarget = &a.TokenTTL
		case "dpop_iat_window":
			durTarget = &a.DPoPIATWindow
		case "dpop_clock_skew":
			durTarget = &a.DPoPClockSkew
		case "audit_checkpoint_interval":
			durTarget = &a.AuditCheckpointInterval
		case "audit_verify_interval":
			durTarget = &a.AuditVerifyInterval
		case "dpop_nonce":
			target = &a.DPoPNonce
		case "audit_sync":
			target = &a.AuditSync
		case "audit_timestamp_url":
			target = &a.AuditTimestampURL
		case "policy":
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.PolicyRules != "" {
				return d.Errf("mastio option policy specified more than once")
			}
			var lines []string
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				line := strings.Join(append([]string{d.Val()}, d.RemainingArgs()...), " ")
				if _, err := policy.Parse("config", line); err != nil {
					var pe *policy.ParseError
					if errors.As(err, &pe) {
						return d.Errf("policy rule %q: %s", line, pe.Msg)
					}
					return d.Errf("policy rule %q: %v", line, err)
				}
				lines = append(lines, line)
			}
			if len(lines) == 0 {
				return d.Err("policy block is empty")
			}
			a.PolicyRules = strings.Join(lines, "\n") + "\n"
			continue
		case "mcp_server":
			if !d.NextArg() {
				return d.Err("mcp_server needs a name")
			}
			name := d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
			if _, dup := a.MCPServers[name]; dup {
				return d.Errf("mcp_server %s defined more than once", name)
			}
			srv, err := parseMCPServer(d, name)
			if err != nil {
				return err
			}
			if err := srv.Validate(name); err != nil {
				return d.Err(err.Error())
			}
			if a.MCPServers == nil {
				a.MCPServers = map[string]*mastio.Server{}
			}
			a.MCPServers[name] = srv
			continue
		case "anonymous_rate":
			args := d.RemainingArgs()
			if len(args) != 3 {
				return d.Errf("anonymous_rate takes a route and two rates: anonymous_rate <route> <per-ip|off> <global|off>")
			}
			if _, dup := a.AnonymousRates[args[0]]; dup {
				return d.Errf("anonymous_rate %s specified more than once", args[0])
			}
			var rate mastio.Rate
			for i, target := range []*int{&rate.PerIP, &rate.Global} {
				n, ok := parsePerMinute(args[i+1])
				if !ok {
					return d.Errf("anonymous_rate %s: %q: want requests per minute or off", args[0], args[i+1])
				}
				*target = n
			}
			if a.AnonymousRates == nil {
				a.AnonymousRates = map[string]*mastio.Rate{}
			}
			a.AnonymousRates[args[0]] = &rate
			if err := mastio.ValidateRates(map[string]mastio.Rate{args[0]: rate}); err != nil {
				return d.Err(err.Error())
			}
			continue
		case "audit_commit_delay":
			if d.NextArg() {
				if d.Val() == "off" {
					if a.AuditCommitDelay != 0 || d.NextArg() {
						return d.Errf("mastio option %s takes one value, once", opt)
					}
					a.AuditCommitDelay = -1
					continue
				}
				d.Prev() // a duration: parsed below like the other durations
			}
			durTarget = &a.AuditCommitDelay
		case "ca_key_store":
			if a.CAKeyStoreRaw != nil {
				return d.Errf("mastio option %s specified more than once", opt)
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			mod, err := caddyfile.UnmarshalModule(d, "mastio.ca_key_stores."+name)
			if err != nil {
				return err
			}
			a.CAKeyStoreRaw = caddyconfig.JSONModuleObject(mod, "store", name, nil)
			continue
		case "allow_bearer_tokens":
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.AllowBearerTokens {
				return d.Errf("mastio option %s specified more than once", opt)
			}
			a.AllowBearerTokens = true
			continue
		default:
			return d.Errf("unrecognized mastio option %q (known: data_dir, database, key_encryption_key_file, ca_key_store, redis, redis_unavailable, org_id, trust_domain, public_url, "+
				"admin_secret, agent_cert_lifetime, enrollment_ttl, token_ttl, dpop_iat_window, dpop_clock_skew, dpop_nonce, allow_bearer_tokens, policy, mcp_server, anonymous_rate, audit_sync, audit_commit_delay, audit_checkpoint_interval, audit_verify_interval, audit_timestamp_url)", opt)
		}
		if durTarget != nil {
			if *durTarget != 0 {
				return d.Errf("mastio option %s specified more than once", opt)
			}
			if !d.NextArg() {
				return d.Errf("mastio option %s needs a duration", opt)
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("mastio option %s %q: %v", opt, d.Val(), err)
			}
			if dur <= 0 {
				return d.Errf("mastio option %s must be positive, got %s", opt, d.Val())
			}
			*durTarget = caddy.Duration(dur)
			if d.NextArg() {
				return d.Errf("mastio option %s takes one value, got another: %q", opt, d.Val())
			}
			single := App{AgentCertLifetime: a.AgentCertLifetime, EnrollmentTTL: a.EnrollmentTTL, TokenTTL: a.TokenTTL,
				DPoPIATWindow: a.DPoPIATWindow, DPoPClockSkew: a.DPoPClockSkew, AuditCommitDelay: a.AuditCommitDelay,
				AuditCheckpointInterval: a.AuditCheckpointInterval, AuditVerifyInterval: a.AuditVerifyInterval}
			if err := single.Validate(); err != nil {
				return d.Errf("mastio option %s: %v", opt, err)
			}
			continue
		}
		if *target != "" {
			return d.Errf("mastio option %s specified more than once", opt)
		}
		if !d.NextArg() {
			return d.Errf("mastio option %s needs a value", opt)
		}
		*target = d.Val()
		if d.NextArg() {
			return d.Errf("mastio option %s takes one value, got another: %q", opt, d.Val())
		}
		if *target == "" {
			return d.Errf("mastio option %s: empty value", opt)
		}
		if err := a.checkOption(opt); err != nil {
			return d.Errf("mastio option %s: %v", opt, err)
		}
	}
	return nil
}

// checkOption validates the value of one option, so that mistakes are
// reported with their line. The file system is not looked at: a Caddyfile
// may be adapted on another machine than the one that runs it.
func (a *App) checkOption(opt string) error {
	single := App{}
	switch opt {
	case "data_dir":
		return nil // checked where the config runs (Provision), not where it is adapted
	case "database", "key_encryption_key_file", "redis":
		return nil
	case "redis_unavailable":
		single.RedisUnavailable = a.RedisUnavailable
	case "org_id":
		single.OrgID = a.OrgID
	case "trust_domain":
		single.TrustDomain = a.TrustDomain
	case "public_url":
		single.PublicURL = a.PublicURL
	case "admin_secret":
		single.AdminSecret = a.AdminSecret
	case "dpop_nonce":
		single.DPoPNonce = a.DPoPNonce
	case "audit_sync":
		single.AuditSync = a.AuditSync
	}
	return single.Validate()
}

type errorString string

func (e errorString) Error() string { return string(e) }

// parsePerMinute reads a rate of the Caddyfile: a positive number per
// minute, or off (-1: no limit).
func parsePerMinute(v string) (int, bool) {
	if v == "off" {
		return -1, true
	}
	n, err := strconv.Atoi(v)
	return n, err == nil && n > 0
}
