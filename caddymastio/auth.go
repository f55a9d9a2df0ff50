package caddymastio

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

func init() {
	caddy.RegisterModule(Auth{})
	httpcaddyfile.RegisterHandlerDirective("mastio_auth", parseAuthDirective)
	httpcaddyfile.RegisterDirectiveOrder("mastio_auth", httpcaddyfile.After, "forward_auth")
}

// Auth guards any route: the request must come from an active agent of
// this Mastio, with a DPoP-bound access token (the default) or with a
// pinned client certificate alone. It then sets these placeholders for
// the handlers after it (reverse_proxy header_up, log, ...):
//
//	Placeholder          | Value
//	---------------------|------------------------------------------------
//	{mastio.agent_id}    | the agent id, <org>::<name>
//	{mastio.spiffe_id}   | spiffe://<trust_domain>/<org>/<name>
//	{mastio.jkt}         | the DPoP key thumbprint (token mode)
//	{mastio.scope}       | the granted scope (capabilities), space-separated
//
// The same values are request variables ({http.vars.mastio.agent_id}, ...),
// {http.auth.user.id} is the agent id, and the access log gets agent_id.
//
// Token mode checks, in order: one Authorization header with the DPoP
// scheme (a DPoP-bound token sent as Bearer is refused); the token's ES256
// signature by a key of the ring (active or deprecated in grace), typ,
// iss, aud, exp/iat with 5s leeway; the DPoP proof (RFC 9449 §4.3: typ,
// asymmetric alg, public jwk, signature, htm, htu, iat window, ath, server
// nonce, single use per key); proof key = cnf.jkt; client certificate =
// cnf.x5t#S256 when the token is certificate-bound; and that the agent is
// still active, so revocation takes effect on the next request, not when
// the token expires. Refusals are 401 with WWW-Authenticate: DPoP
// error="invalid_token" | "invalid_dpop_proof" | "use_dpop_nonce",
// error_description, algs and resource_metadata, and a JSON body with the
// same code; a missing scope is 403 insufficient_scope.
//
// The agent's Authorization and DPoP headers are removed before the
// request goes on, so tokens are never passed through to upstreams, and so
// are inbound headers that older proxies used to claim a client identity
// (X-SSL-Client-*, X-Client-Cert, X-Forwarded-Client-Cert).
type Auth struct {
	// What a request must present: "token" (default; a DPoP-bound access
	// token from this Mastio) or "mtls" (a client certificate pinned to an
	// active agent).
	Require string `json:"require,omitempty"`

	// Scopes the caller must hold (all of them): capabilities granted to
	// the agent, carried in the token's scope claim.
	Scopes []string `json:"scopes,omitempty"`

	app *App
	m   *mastio.Mastio
}

// CaddyModule returns the Caddy module information.
func (Auth) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mastio_auth",
		New: func() caddy.Module { return new(Auth) },
	}
}

// Provision attaches the guard to the mastio app.
func (h *Auth) Provision(ctx caddy.Context) error {
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	h.app = app.(*App)
	h.m = h.app.Mastio()
	if h.Require == "" {
		h.Require = "token"
	}
	return nil
}

// Validate checks the mode and scopes.
func (h *Auth) Validate() error {
	switch h.Require {
	case "token", "mtls":
	default:
		return fmt.Errorf("require %q: want token or mtls", h.Require)
	}
	for _, s := range h.Scopes {
		if s == "" || strings.ContainsAny(s, " \t") {
			return fmt.Errorf("invalid scope %q", s)
		}
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Auth) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.app.serve(w, r, func(w http.ResponseWriter, r *http.Request) error { return h.serve(w, r, next) })
}

func (h *Auth) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var p *mastio.Principal
	var ref *mastio.Refusal
	if h.Require == "mtls" {
		p, ref = h.m.AuthenticateCertificate(r)
	} else {
		p, ref = h.m.AuthenticateToken(r)
	}
	if ref == nil {
		for _, need := range h.Scopes {
			if !p.HasScope(need) {
				ref = &mastio.Refusal{Status: 403, Code: "insufficient_scope", Reason: "insufficient_scope", AgentID: p.AgentID,
					Description: fmt.Sprintf("the agent %s lacks the scope %q this route requires", p.AgentID, need)}
				break
			}
		}
	}
	if ref != nil {
		h.m.Refuse(w, r, ref)
		return nil
	}
	r, done := h.m.Admit(w, r, p)
	defer done()

	scope := strings.Join(p.Scope, " ")
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for k, v := range map[string]string{"mastio.agent_id": p.AgentID, "mastio.spiffe_id": p.SPIFFEID, "mastio.jkt": p.JKT, "mastio.scope": scope} {
		repl.Set(k, v)
		caddyhttp.SetVar(r.Context(), k, v)
	}
	repl.Set("http.auth.user.id", p.AgentID)
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Add(zap.String("agent_id", p.AgentID))
	}
	return next.ServeHTTP(w, r)
}

// parseAuthDirective sets up the guard from Caddyfile tokens. Syntax:
//
//	mastio_auth [<matcher>] [token|mtls] {
//	    scope <capability...>
//	}
func parseAuthDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(Auth)
	if err := a.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return a, nil
}

// UnmarshalCaddyfile implements caddyfile.Unmarshaler (see
// parseAuthDirective for the syntax).
func (h *Auth) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		h.Require = d.Val()
		if h.Require != "token" && h.Require != "mtls" {
			return d.Errf("mastio_auth: %q is not token or mtls", h.Require)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "scope":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Scopes = append(h.Scopes, args...)
		default:
			return d.Errf("unrecognized mastio_auth option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Auth)(nil)
	_ caddy.Validator             = (*Auth)(nil)
	_ caddyhttp.MiddlewareHandler = (*Auth)(nil)
	_ caddyfile.Unmarshaler       = (*Auth)(nil)
)
