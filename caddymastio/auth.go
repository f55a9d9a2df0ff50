package caddymastio

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
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

	app    *App
	logger *zap.Logger
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
	h.logger = ctx.Logger()
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	h.app = app.(*App)
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

// Principal is an authenticated caller.
type Principal struct {
	AgentID  string
	SPIFFEID string
	JKT      string
	Scope    []string
	Method   string // dpop, bearer or mtls
	Claims   *token.Claims
	// Pin is the SHA-256 of the client certificate of the connection, if
	// it presented one: the request stops being served when that
	// certificate is revoked or rotated out.
	Pin *[32]byte
}

// credential is what p was admitted with.
func (p *Principal) credential() registry.Credential {
	return registry.Credential{AgentID: p.AgentID, Pin: p.Pin}
}

// tlsPin returns the SHA-256 of the request's client certificate, or nil.
func tlsPin(r *http.Request) *[32]byte {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	return &sum
}

// AuthenticateToken checks the access token and DPoP proof of r.
func (a *App) AuthenticateToken(r *http.Request) (*Principal, *authError) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return nil, &authError{Status: 401, Description: "an access token is required: Authorization: DPoP <token> with a DPoP proof", Reason: "missing_token"}
	}
	if len(values) > 1 {
		return nil, &authError{Status: 401, Code: "invalid_token", Description: "exactly one Authorization header is allowed", Reason: "invalid_token"}
	}
	scheme, tok, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	tok = strings.TrimSpace(tok)
	scheme = strings.ToLower(scheme)
	if scheme != "dpop" && scheme != "bearer" || tok == "" {
		return nil, &authError{Status: 401, Code: "invalid_token", Description: "use Authorization: DPoP <token>", Reason: "invalid_token"}
	}
	claims, verr := a.state.tokens.Verify(tok, token.Expect{Issuer: a.issuer, Audience: a.issuer, Leeway: 5 * time.Second})
	if verr != nil {
		return nil, &authError{Status: 401, Code: "invalid_token", Description: verr.Description, Reason: "invalid_token"}
	}
	p, aerr := a.checkTokenUse(r, tok, scheme, claims)
	if aerr != nil {
		// The token is ours and valid: the refusal names its agent.
		aerr.AgentID = claims.Subject
		return nil, aerr
	}
	return p, nil
}

// checkTokenUse checks how a valid token is presented: scheme, DPoP proof,
// certificate binding and that the agent is still active.
func (a *App) checkTokenUse(r *http.Request, tok, scheme string, claims *token.Claims) (*Principal, *authError) {
	bound := claims.Cnf != nil && claims.Cnf.JKT != ""
	p := &Principal{AgentID: claims.Subject, SPIFFEID: claims.SPIFFEID, Scope: strings.Fields(claims.Scope), Claims: claims,
		Pin: tlsPin(r)}
	switch {
	case scheme == "bearer" && bound:
		return nil, &authError{Status: 401, Code: "invalid_token",
			Description: "this token is DPoP-bound: present it with Authorization: DPoP and a DPoP proof, not as Bearer", Reason: "bearer_downgrade"}
	case scheme == "dpop" && !bound:
		return nil, &authError{Status: 401, Code: "invalid_token", Description: "this token is not DPoP-bound (no cnf.jkt)", Reason: "unbound_token"}
	case scheme == "bearer" && !a.AllowBearerTokens:
		return nil, &authError{Status: 401, Code: "invalid_token", Description: "bearer tokens are not accepted here: use a DPoP-bound token", Reason: "bearer_refused"}
	case bound:
		proof, perr := dpop.Verify(r.Context(), r.Header.Values("DPoP"), a.proofChecks(r, tok))
		if perr != nil {
			return nil, a.proofError(r, perr, a.logger)
		}
		if proof.JKT != claims.Cnf.JKT {
			return nil, &authError{Status: 401, Code: "invalid_dpop_proof",
				Description: "the proof is signed by another key than the one the token is bound to (cnf.jkt)", Reason: "jkt_mismatch"}
		}
		p.JKT, p.Method = proof.JKT, "dpop"
	default:
		p.Method = "bearer"
	}
	var tlsLeaf []byte
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		tlsLeaf = r.TLS.PeerCertificates[0].Raw
	}
	if claims.Cnf != nil && claims.Cnf.X5T != "" {
		if tlsLeaf == nil || jwt.CertThumbprint(tlsLeaf) != claims.Cnf.X5T {
			return nil, &authError{Status: 401, Code: "invalid_token",
				Description: "this token is bound to a client certificate (cnf.x5t#S256) that this connection does not present", Reason: "cert_mismatch"}
		}
	}
	if tlsLeaf != nil {
		tlsID, cerr := a.AgentFromTLS(r)
		if cerr != nil {
			return nil, &authError{Status: 401, Code: "invalid_token", Description: cerr.Message, Reason: cerr.Code}
		}
		if tlsID.AgentID != claims.Subject {
			return nil, &authError{Status: 401, Code: "invalid_token", Description: "the client certificate belongs to another agent than the token",
				Reason: "cert_agent_mismatch"}
		}
	}
	if _, active := a.state.registry.Lookup(claims.Subject); !active {
		return nil, &authError{Status: 401, Code: "invalid_token", Description: "the agent " + claims.Subject + " has been revoked", Reason: "agent_revoked"}
	}
	return p, nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Auth) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.app.serveRedacted(w, r, func(w http.ResponseWriter, r *http.Request) error { return h.serve(w, r, next) })
}

func (h *Auth) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.app.readyOrRefuse(w) {
		return nil
	}
	var p *Principal
	var aerr *authError
	if h.Require == "mtls" {
		id, cerr := h.app.AgentFromTLS(r)
		if cerr != nil {
			aerr = &authError{Status: 401, Code: cerr.Code, Description: cerr.Message, Reason: cerr.Code, NoChallenge: true,
				AgentID: cerr.AgentID}
		} else {
			p = &Principal{AgentID: id.AgentID, SPIFFEID: id.SPIFFEID, Scope: id.Capabilities, Method: "mtls", Pin: tlsPin(r)}
		}
	} else {
		p, aerr = h.app.AuthenticateToken(r)
	}
	if aerr == nil {
		for _, need := range h.Scopes {
			if !contains(p.Scope, need) {
				aerr = &authError{Status: 403, Code: "insufficient_scope", Reason: "insufficient_scope", AgentID: p.AgentID,
					Description: fmt.Sprintf("the agent %s lacks the scope %q this route requires", p.AgentID, need)}
				break
			}
		}
	}
	if aerr != nil {
		h.app.refuseAuth(w, r, aerr, h.logger)
		return nil
	}
	r, done := h.app.admit(w, r, p)
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

// credentialHeaders are removed from a request once its caller is known:
// the agent's own credentials, so they never reach an upstream, and the
// headers older proxies used to claim a client identity, so an upstream
// cannot be fooled by a caller that sets them.
var credentialHeaders = []string{"Authorization", "DPoP", "X-SSL-Client-Cert", "X-SSL-Client-Verify", "X-SSL-Client-S-DN",
	"X-Client-Cert", "X-Forwarded-Client-Cert"}

// Identity headers: whatever a caller sent under these names is removed,
// then the guard sets X-Agent-Id and X-Agent-Spiffe-Id from the verified
// identity, in every mode, so an upstream reading them reads what the
// Mastio verified. Any X-Mastio-* or X-Cullis-* header is removed too (the
// original Mastio's prefix, and ours for headers an operator sets from
// {mastio.*} placeholders).
var (
	identityHeaders        = []string{"X-Agent-Id", "X-Agent-Spiffe-Id", "X-Agent-Jkt", "X-Agent-Scope", "X-Agent-Capabilities", "X-Agent-Groups"}
	identityHeaderPrefixes = []string{"X-Mastio-", "X-Cullis-"}
)

// setIdentityHeaders replaces every identity header of r by the verified
// identity p.
func setIdentityHeaders(r *http.Request, p *Principal) {
	for _, hdr := range credentialHeaders {
		r.Header.Del(hdr)
	}
	for _, hdr := range identityHeaders {
		r.Header.Del(hdr)
	}
	for name := range r.Header {
		for _, prefix := range identityHeaderPrefixes {
			if strings.HasPrefix(name, prefix) {
				delete(r.Header, name)
			}
		}
	}
	r.Header.Set("X-Agent-Id", p.AgentID)
	if p.SPIFFEID != "" {
		r.Header.Set("X-Agent-Spiffe-Id", p.SPIFFEID)
	}
}

// admit is what every handler does with an authenticated agent before
// serving it: count it, strip the credential headers, hand token callers
// the current DPoP nonce, and track the request so that revoking or
// rotating out its credentials ends it (its context is cancelled). The
// caller serves the returned request and calls done when it returns.
func (a *App) admit(w http.ResponseWriter, r *http.Request, p *Principal) (*http.Request, func()) {
	authCounter.WithLabelValues("success", p.Method).Inc()
	setIdentityHeaders(r, p)
	if a.nonceMode != dpop.NonceOff && p.Method == "dpop" {
		w.Header().Set("DPoP-Nonce", a.state.nonces.Current(time.Now()))
	}
	ctx, done := a.state.inflight.track(context.WithValue(r.Context(), principalKey{}, p), p.credential())
	return r.WithContext(ctx), done
}

// refuseAuth counts, logs and answers a refused request; a refusal that
// names an agent is audited (auth.refused), others are counted only.
func (a *App) refuseAuth(w http.ResponseWriter, r *http.Request, aerr *authError, logger *zap.Logger) {
	authCounter.WithLabelValues("deny", aerr.Reason).Inc()
	fields := []zap.Field{zap.String("reason", aerr.Reason), zap.String("error", aerr.Description),
		zap.String("remote_ip", clientIP(r)), zap.String("method", r.Method), zap.String("uri", r.RequestURI)}
	if aerr.AgentID != "" {
		fields = append(fields, zap.String("agent_id", aerr.AgentID))
		logger.Info("request refused", fields...)
		a.auditRefusal(r, "auth.refused", aerr.AgentID, aerr.Status, aerr.Reason, aerr.Description, nil)
	} else {
		a.refusalLog.Info("request refused", fields...)
	}
	if aerr.NoChallenge {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: aerr.Status, Code: aerr.Code, Reason: aerr.Code, Message: aerr.Description,
			Hint: hintFor(aerr.Code)})
		return
	}
	a.writeAuthError(w, r, aerr)
}

// agentRequest is a request of an authenticated agent, as a handler that
// authenticates its own callers serves it.
type agentRequest struct {
	r    *http.Request // with the tracked context
	p    *Principal
	pol  policy.Principal
	done func()
}

// authenticateAgent authenticates a handler's own caller by DPoP-bound
// token, for handlers that may serve agents without mastio_auth in front
// (mastio_mcp, /v1/mcp). ok is false after the refusal was answered; the
// caller serves ar.r and calls ar.done when it returns.
func (a *App) authenticateAgent(w http.ResponseWriter, r *http.Request, logger *zap.Logger) (ar agentRequest, ok bool) {
	ar.r, ar.done = r, func() {}
	ar.p = principalFrom(r) // set by mastio_auth, which admitted it already
	if ar.p == nil {
		var aerr *authError
		if ar.p, aerr = a.AuthenticateToken(r); aerr != nil {
			a.refuseAuth(w, r, aerr, logger)
			return ar, false
		}
		ar.r, ar.done = a.admit(w, r, ar.p)
	}
	if ar.pol, ok = a.principalFor(ar.p.AgentID); !ok { // revoked since the token was checked
		ar.done()
		a.refuseAuth(w, r, &authError{Status: 401, Code: "invalid_token", Description: "the agent has been revoked", Reason: "agent_revoked",
			AgentID: ar.p.AgentID}, logger)
		return ar, false
	}
	return ar, true
}

type principalKey struct{}

// principalFrom returns the caller mastio_auth authenticated, if any.
func principalFrom(r *http.Request) *Principal {
	p, _ := r.Context().Value(principalKey{}).(*Principal)
	return p
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
