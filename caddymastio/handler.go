package caddymastio

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("mastio", parseHandlerDirective)
	httpcaddyfile.RegisterDirectiveOrder("mastio", httpcaddyfile.Before, "basicauth")
}

// Handler serves the Mastio's own endpoints and passes every other request
// to the next handler, so it can sit in front of anything else a site
// serves. Endpoints (package endpoints has the details):
//
//	GET  /healthz, /health, /readyz   liveness, version, readiness (503 naming failing checks)
//	GET  /pki/ca.crt                  the Org root certificate (PEM) for agents to pin
//	POST /v1/enrollment/start         an agent asks to enroll (5/min per address)
//	GET  /v1/enrollment/{sid}/status  the outcome, with X-Enrollment-Proof
//	POST /v1/auth/token               access tokens for a client assertion and a DPoP proof
//	POST /v1/auth/login-challenge, /v1/auth/sign-challenged-assertion
//	                                  the original SDK's challenge login (mTLS)
//	GET  /v1/agents/me, /v1/agents/search
//	                                  agent routes: a client certificate pinned to an
//	                                  active agent, re-checked on every request
//	/v1/mcp                           the MCP aggregator over every registered MCP server
//	/v1/admin/..., /registry/agents/{id}/revoke|rotate-cert, /proxy/admin/agents
//	                                  the admin API (X-Admin-Secret; package admin)
//	GET  /.well-known/jwks.json, oauth-authorization-server, oauth-protected-resource[/path]
//
// A path under /v1/, /registry/, /proxy/, /pki/ or /.well-known/ that no
// endpoint serves is answered 404 (405 for another method), never passed
// on.
//
// The Caddyfile directive is `mastio`, ordered before basic_auth so the
// Mastio's endpoints (which authenticate their callers themselves) are not
// shadowed by other handlers.
type Handler struct {
	app        *App
	endpoints  *endpoints.Handler
	pool       *gateway.Pool
	aggregator *gateway.Aggregator
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mastio",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision builds the routes once, over this configuration's view of the
// core, with the MCP aggregator and its upstream pool.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	return h.provisionWith(ctx, app.(*App))
}

func (h *Handler) provisionWith(ctx caddy.Context, app *App) error {
	h.app = app
	m, log := app.Mastio(), ctx.Logger()
	repl := caddy.NewReplacer()
	h.pool = gateway.NewPool(m, func(s string) string { return repl.ReplaceKnown(s, "") })
	h.aggregator = gateway.NewAggregator(m, log, h.pool)
	h.endpoints = endpoints.New(m, log, endpoints.Routes{"/v1/mcp": h.aggregator})
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// Requests passed on are redacted too: a credential sent to the wrong
	// path must not reach the access log either.
	return h.app.serveRedacted(w, r, func(w http.ResponseWriter, r *http.Request) error {
		if !h.endpoints.Owns(r) {
			return next.ServeHTTP(w, r)
		}
		if h.app.readyOrRefuse(w) {
			h.endpoints.ServeHTTP(w, r)
		}
		return nil
	})
}

// Cleanup ends the aggregator's sessions and closes its upstream sessions.
func (h *Handler) Cleanup() error {
	if h.aggregator != nil {
		h.aggregator.Close()
	}
	if h.pool != nil {
		h.pool.Close()
	}
	return nil
}

// parseHandlerDirective sets up the handler from Caddyfile tokens. Syntax:
//
//	mastio
//
// It takes no arguments; the mastio global option configures everything.
func parseHandlerDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	return handler, handler.UnmarshalCaddyfile(h.Dispenser)
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler (see
// parseHandlerDirective for the syntax).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("the mastio directive takes no options, got %q (configure the mastio global option)", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
