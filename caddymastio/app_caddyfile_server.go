package caddymastio

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// parseMCPServer reads the block of an mcp_server (its syntax is in
// parseGlobalOption's doc comment).
func parseMCPServer(d *caddyfile.Dispenser, name string) (*mastio.Server, error) {
	srv := &mastio.Server{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub == "oauth" {
			o, err := parseOAuth(d, name)
			if err != nil {
				return nil, err
			}
			srv.OAuth = o
			continue
		}
		args := d.RemainingArgs()
		one := func() (string, error) {
			if len(args) != 1 {
				return "", d.Errf("mcp_server %s: %s takes one value", name, sub)
			}
			return args[0], nil
		}
		var err error
		switch sub {
		case "url":
			srv.URL, err = one()
		case "prefix":
			srv.Prefix, err = one()
		case "bearer_secret":
			srv.BearerSecret, err = one()
		case "ca_file":
			srv.CAFile, err = one()
		case "client_certificate":
			if len(args) != 0 {
				return nil, d.Errf("mcp_server %s: client_certificate takes no value", name)
			}
			srv.ClientCertificate = true
		case "header":
			if len(args) != 2 {
				return nil, d.Errf("mcp_server %s: header takes a name and a value", name)
			}
			if srv.Headers == nil {
				srv.Headers = map[string]string{}
			}
			srv.Headers[args[0]] = args[1]
		case "timeout":
			var v string
			if v, err = one(); err == nil {
				dur, perr := caddy.ParseDuration(v)
				if perr != nil || dur <= 0 {
					return nil, d.Errf("mcp_server %s: timeout %q: want a positive duration", name, v)
				}
				srv.Timeout = mastio.Duration(dur)
			}
		case "max_argument_bytes":
			var v string
			if v, err = one(); err == nil {
				n, perr := strconv.ParseInt(v, 10, 64)
				if perr != nil || n <= 0 {
					return nil, d.Errf("mcp_server %s: max_argument_bytes %q: want a positive number", name, v)
				}
				srv.MaxArgumentBytes = n
			}
		case "agent_rate", "item_rate":
			var v string
			if v, err = one(); err == nil {
				n, ok := parsePerMinute(v)
				if !ok {
					return nil, d.Errf("mcp_server %s: %s %q: want calls per minute or off", name, sub, v)
				}
				if sub == "agent_rate" {
					srv.AgentRate = n
				} else {
					srv.ItemRate = n
				}
			}
		default:
			return nil, d.Errf("mcp_server %s: unrecognized option %q", name, sub)
		}
		if err != nil {
			return nil, err
		}
	}
	return srv, nil
}

// parseOAuth reads an mcp_server's oauth block.
func parseOAuth(d *caddyfile.Dispenser, name string) (*mastio.OAuthClient, error) {
	if d.NextArg() {
		return nil, d.Errf("mcp_server %s: oauth takes a block, not %q", name, d.Val())
	}
	o := &mastio.OAuthClient{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		args := d.RemainingArgs()
		if sub == "scope" {
			if len(args) == 0 {
				return nil, d.Errf("mcp_server %s: oauth scope needs at least one scope", name)
			}
			o.Scopes = append(o.Scopes, args...)
			continue
		}
		if len(args) != 1 {
			return nil, d.Errf("mcp_server %s: oauth %s takes one value", name, sub)
		}
		switch sub {
		case "token_url":
			o.TokenURL = args[0]
		case "client_id":
			o.ClientID = args[0]
		case "client_secret":
			o.ClientSecret = args[0]
		case "client_secret_name":
			o.ClientSecretName = args[0]
		case "resource":
			o.Resource = args[0]
		default:
			return nil, d.Errf("mcp_server %s: oauth: unrecognized option %q", name, sub)
		}
	}
	return o, nil
}
