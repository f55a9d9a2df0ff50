package caddymastio

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler serves the Mastio's own endpoints and passes every other request
// to the next handler, so it can sit in front of anything else a site
// serves. Endpoints:
//
//	GET  /healthz      liveness: 200 {"status":"ok"}
//	GET  /health       liveness with the version
//	GET  /readyz       readiness: 200 {"status":"ready","checks":{...}}, or 503
//	                   naming the failing checks (database, pki, signing_keys)
//	GET  /pki/ca.crt   the Org root certificate (PEM) for agents to pin,
//	                   with a strong ETag and Cache-Control
//	POST /v1/enrollment/start         an agent asks to enroll (proof of
//	                                  possession of its key; 5/min per address)
//	GET  /v1/enrollment/{sid}/status  the outcome, with X-Enrollment-Proof
//	/v1/admin/..., /registry/agents/{id}/revoke|rotate-cert, /proxy/admin/agents
//	                   the admin API (X-Admin-Secret; see package admin)
//	GET  /v1/agents/me, /v1/agents/search
//	                   agent routes: a client certificate pinned to an active
//	                   agent is required, and re-checked on every request
//	POST /v1/mcp                     the MCP aggregator over every registered
//	                                 MCP server (DPoP-bound token; see serveAggregator)
//	POST /v1/auth/token              access tokens for a client assertion
//	                                 and a DPoP proof (RFC 9449, RFC 7523)
//	POST /v1/auth/login-challenge, /v1/auth/sign-challenged-assertion
//	                                 the original SDK's challenge login (mTLS)
//	GET  /.well-known/jwks.json (and jwks-local.json)   token keys
//	GET  /.well-known/oauth-authorization-server        RFC 8414 metadata
//	GET  /.well-known/oauth-protected-resource[/path]   RFC 9728 metadata
//
// Agent routes answer 401 with a stable reason (client_cert_required,
// client_cert_untrusted, client_cert_pin_mismatch, agent_revoked) and a
// human message. Identity is read from the TLS connection only.
//
// The Caddyfile directive is `mastio`, ordered before basic_auth so the
// gateway's own endpoints (which authenticate their callers themselves)
// are not shadowed by other handlers.
type Handler struct {
	app    *App
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mastio",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision attaches the handler to the mastio app.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	h.app = app.(*App)
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.app.serveRedacted(w, r, func(w http.ResponseWriter, r *http.Request) error { return h.serve(w, r, next) })
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.app.readyOrRefuse(w) {
		return nil
	}
	path := r.URL.Path
	if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/registry/") || path == "/proxy/admin/agents" {
		// TLS early data can be replayed; nothing here may act on it.
		if r.TLS != nil && !r.TLS.HandshakeComplete {
			httpjson.Error(w, http.StatusTooEarly, "too_early", "retry after the TLS handshake completes")
			return nil
		}
		if strings.HasPrefix(path, "/v1/") && h.app.nonceMode != dpop.NonceOff {
			// Clients pick up the current nonce from any response.
			w.Header().Set("DPoP-Nonce", h.app.state.nonces.Current(time.Now()))
		}
		switch {
		case strings.HasPrefix(path, "/v1/enrollment/"):
			return h.serveEnrollment(w, r)
		case admin.Handles(path):
			h.app.adminAPI.ServeHTTP(w, r)
			return nil
		case path == "/v1/auth/token":
			return h.serveToken(w, r)
		case path == "/v1/mcp":
			return h.serveAggregator(w, r)
		case certRequired(path):
			return h.serveAgentRoute(w, r)
		}
	}
	switch {
	case path == "/.well-known/jwks.json" || path == "/.well-known/jwks-local.json":
		return h.get(w, r, func() { h.serveJWKS(w, r) })
	case path == "/.well-known/oauth-authorization-server" || path == "/.well-known/oauth-protected-resource" ||
		strings.HasPrefix(path, "/.well-known/oauth-protected-resource/"):
		return h.get(w, r, func() { h.serveMetadata(w, r) })
	}
	switch path {
	case "/healthz":
		return h.get(w, r, func() { httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok"}) })
	case "/health":
		return h.get(w, r, func() { httpjson.Write(w, http.StatusOK, map[string]string{"status": "ok", "version": Version()}) })
	case "/readyz":
		return h.get(w, r, func() { h.serveReadyz(w, r) })
	case "/pki/ca.crt":
		return h.get(w, r, func() { h.serveCACert(w, r) })
	}
	if strings.HasPrefix(path, "/proxy/enrollments/") {
		return h.get(w, r, func() { h.serveEnrollmentLink(w, r) })
	}
	if owned(path) {
		notFound(w, path)
		return nil
	}
	return next.ServeHTTP(w, r)
}

// ownedPrefixes are the namespaces the Mastio answers for entirely: a path
// under them that no endpoint serves is 404 here, never passed on.
var ownedPrefixes = []string{"/v1/", "/registry/", "/proxy/", "/pki/", "/.well-known/"}

func owned(path string) bool {
	for _, p := range ownedPrefixes {
		if strings.HasPrefix(path, p) || path+"/" == p {
			return true
		}
	}
	return false
}

// notProvided are the original Mastio's routes this gateway does not
// have, with what to use instead.
var notProvided = []struct{ prefix, message string }{
	{"/v1/egress/", "the original Mastio's egress API (agent messaging through a Cullis Court) is not part of caddy-mastio; MCP tools are served at /v1/mcp"},
	{"/v1/chat/", "LLM proxying (/v1/chat/completions) is not part of caddy-mastio: put the LLM API behind a route with mastio_auth and reverse_proxy"},
	{"/v1/models", "LLM proxying (/v1/models) is not part of caddy-mastio: put the LLM API behind a route with mastio_auth and reverse_proxy"},
	{"/v1/llm/", "LLM proxying is not part of caddy-mastio: put the LLM API behind a route with mastio_auth and reverse_proxy"},
	{"/v1/ingress/", "federated ingress is not part of caddy-mastio; MCP tools are served at /v1/mcp"},
	{"/v1/broker/", "federation with a Cullis Court (broker) is not part of caddy-mastio"},
	{"/v1/federation/", "federation with a Cullis Court (broker) is not part of caddy-mastio"},
	{"/v1/guardian/", "the Guardian inspection API is not part of caddy-mastio"},
	{"/v1/principals/", "user and workload principals are not part of caddy-mastio; agents enroll at POST /v1/enrollment/start"},
	{"/v1/policy/", "the MCP policy is managed at /v1/admin/policies"},
	{"/proxy/", "the dashboard is not part of this version of caddy-mastio; use the admin API (/v1/admin/..., see the README)"},
}

// notFound answers 404 for a path in the Mastio's namespaces.
func notFound(w http.ResponseWriter, path string) {
	msg := "nothing is served at " + path + " (see the README for the Mastio's endpoints)"
	for _, np := range notProvided {
		if strings.HasPrefix(path, np.prefix) || path == strings.TrimSuffix(np.prefix, "/") {
			msg = np.message
			break
		}
	}
	httpjson.Error(w, http.StatusNotFound, "not_found", msg)
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request, serve func()) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		httpjson.Error(w, http.StatusMethodNotAllowed, "method_not_allowed", "use GET or HEAD")
		return nil
	}
	serve()
	return nil
}

func (h *Handler) serveReadyz(w http.ResponseWriter, r *http.Request) {
	res := h.app.Readiness(r.Context())
	body := struct {
		Status string `json:"status"`
		Readiness
	}{Status: "ready", Readiness: res}
	status := http.StatusOK
	if !res.Ready() {
		body.Status, status = "not_ready", http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	httpjson.Write(w, status, body)
}

func (h *Handler) serveCACert(w http.ResponseWriter, r *http.Request) {
	pemBytes := h.app.CA().RootPEM()
	sum := sha256.Sum256(pemBytes)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(pemBytes)
	}
}

// etagMatch implements the weak comparison of If-None-Match (RFC 9110
// §13.1.2).
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
