package caddymastio

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

func init() {
	caddy.RegisterModule(MCPGateway{})
	httpcaddyfile.RegisterHandlerDirective("mastio_mcp", parseMCPDirective)
	httpcaddyfile.RegisterDirectiveOrder("mastio_mcp", httpcaddyfile.Before, "reverse_proxy")
}

// MCPGateway enforces MCP policy in front of the handler that proxies to
// one MCP server (reverse_proxy), for Streamable HTTP in every revision:
// JSON and SSE responses, Mcp-Session-Id sessions, GET streams, and the
// stateless 2026-07-28 revision whose Mcp-Method and Mcp-Name headers must
// agree with the body (package gateway does the work).
//
// Each POSTed JSON-RPC message (batches too) is read strictly and decided:
//
//   - tools/call, resources/read, prompts/get: forwarded only if the policy
//     allows this agent this item on this server (resource
//     <server>/<name>); otherwise the gateway answers a JSON-RPC error
//     (HTTP 200, code -32000) naming the deciding rule, and the request
//     never reaches the server. Per-agent and per-agent-per-item rate
//     limits apply (429 with Retry-After).
//   - tools/list, prompts/list, resources/list, resources/templates/list:
//     the server's answer, JSON or SSE, on any stream, is filtered to the
//     items the agent may use; pagination (nextCursor) is kept.
//   - anything else passes through, re-encoded from what was read.
//
// Every call and every denial is audited (mcp.call: agent, DPoP key,
// server, item, decision and rule, SHA-256 of the arguments, duration,
// upstream status) and committed before the client sees the answer.
//
// The caller must be an agent: mastio_auth before this handler, or this
// handler authenticates the DPoP-bound token itself. A session
// (Mcp-Session-Id) belongs to the agent that opened it.
type MCPGateway struct {
	// Server is this upstream's name in policy resources (<server>/<name>).
	Server string `json:"server,omitempty"`

	// Largest request body accepted. Default: 1048576 (1 MiB).
	MaxRequestBytes int64 `json:"max_request_bytes,omitempty"`

	// Largest JSON (not streamed) response read for filtering. Larger
	// answers are refused with a JSON-RPC error. Default: 16777216 (16 MiB).
	MaxResponseBytes int64 `json:"max_response_bytes,omitempty"`

	// How long a POST may take end to end before the gateway answers a
	// JSON-RPC error. Default: 60s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Calls per minute per agent on this server. Default: 600. -1: none.
	AgentRate int `json:"agent_rate,omitempty"`

	// Calls per minute per agent per item (tool, prompt, resource).
	// Default: 120. -1: none.
	ItemRate int `json:"item_rate,omitempty"`

	app   *App
	route *gateway.Route
}

// CaddyModule returns the Caddy module information.
func (MCPGateway) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mastio_mcp",
		New: func() caddy.Module { return new(MCPGateway) },
	}
}

// Provision builds the filter over this configuration's view of the core.
func (g *MCPGateway) Provision(ctx caddy.Context) error {
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	g.app = app.(*App)
	g.route = gateway.NewRoute(g.app.Mastio(), ctx.Logger(), gateway.RouteSettings{Server: g.Server,
		MaxRequestBytes: g.MaxRequestBytes, MaxResponseBytes: g.MaxResponseBytes, Timeout: time.Duration(g.Timeout),
		AgentRate: g.AgentRate, ItemRate: g.ItemRate})
	return nil
}

// Validate checks the configuration.
func (g *MCPGateway) Validate() error {
	if g.Server == "" || strings.ContainsAny(g.Server, "/ \t") {
		return fmt.Errorf("server %q: a name without spaces or slashes is required (it is the <server> of policy resources)", g.Server)
	}
	if g.MaxRequestBytes < 0 || g.MaxResponseBytes < 0 || g.Timeout < 0 {
		return errors.New("max_request_bytes, max_response_bytes and timeout must be positive")
	}
	if g.AgentRate < -1 || g.ItemRate < -1 {
		return errors.New("agent_rate and item_rate are calls per minute, or -1 for no limit")
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (g *MCPGateway) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return g.app.serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
		err := g.route.Serve(w, r, next.ServeHTTP)
		if errors.Is(err, mastio.ErrAuditUnavailable) {
			return caddyhttp.Error(http.StatusServiceUnavailable, err)
		}
		return err
	})
}

// parseMCPDirective sets up the gateway from Caddyfile tokens. Syntax:
//
//	mastio_mcp [<matcher>] <server> {
//	    max_request_bytes  <bytes>
//	    max_response_bytes <bytes>
//	    timeout            <duration>
//	    agent_rate         <calls per minute>|off
//	    item_rate          <calls per minute>|off
//	}
func parseMCPDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	g := new(MCPGateway)
	return g, g.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler.
func (g *MCPGateway) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if !d.NextArg() {
		return d.Err("mastio_mcp needs the server name used in policy resources, e.g. mastio_mcp github")
	}
	g.Server = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "max_request_bytes", "max_response_bytes":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("%s %q: want a positive number of bytes", opt, val)
			}
			if opt == "max_request_bytes" {
				g.MaxRequestBytes = n
			} else {
				g.MaxResponseBytes = n
			}
		case "timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("timeout %q: want a positive duration", val)
			}
			g.Timeout = caddy.Duration(dur)
		case "agent_rate", "item_rate":
			n, ok := parsePerMinute(val)
			if !ok {
				return d.Errf("%s %q: want calls per minute or off", opt, val)
			}
			if opt == "agent_rate" {
				g.AgentRate = n
			} else {
				g.ItemRate = n
			}
		default:
			return d.Errf("unrecognized mastio_mcp option %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*MCPGateway)(nil)
	_ caddy.Validator             = (*MCPGateway)(nil)
	_ caddyhttp.MiddlewareHandler = (*MCPGateway)(nil)
	_ caddyfile.Unmarshaler       = (*MCPGateway)(nil)
)
