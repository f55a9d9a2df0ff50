// Package endpoints is the Mastio's own HTTP surface, over the Caddy-free
// core: health and readiness, the Org CA certificate, enrollment, tokens,
// the certificate-bound agent routes and the well-known documents, with
// other surfaces (the admin API, the MCP aggregator) mounted beside them.
// Routes are built once, on an http.ServeMux.
//
// The Mastio owns /v1/, /registry/, /proxy/, /pki/ and /.well-known/: a
// path there that no route serves is a JSON 404 (405 for a known path and
// another method); other paths are not the Mastio's (see Owns).
package endpoints

import (
	"net/http"
	pathpkg "path"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// Routes are http.ServeMux patterns ("POST /v1/admin/agents") and their
// handlers.
type Routes map[string]http.Handler

// A Surface is another package's routes under the Mastio's paths (the
// admin API), built for each configuration.
type Surface func(m *mastio.Mastio, log *zap.Logger) Routes

var (
	surfacesMu sync.Mutex
	surfaces   = map[string]Surface{}
)

// RegisterSurface adds a surface to every Handler built after it, the way
// database/sql drivers register: package admin registers itself in its
// init, so that this package and the Caddy modules need not import it.
func RegisterSurface(name string, s Surface) {
	surfacesMu.Lock()
	defer surfacesMu.Unlock()
	if _, dup := surfaces[name]; dup {
		panic("endpoints: surface " + name + " registered twice")
	}
	surfaces[name] = s
}

// Handler serves the Mastio's endpoints.
type Handler struct {
	m   *mastio.Mastio
	log *zap.Logger
	mux *http.ServeMux
	// paths are the routes' paths outside the owned namespaces (/healthz,
	// ...), so that Owns, which sees every request of the site, is a map
	// lookup and a few prefix comparisons.
	paths map[string]bool
}

// New builds the routes: the Mastio's own, every registered surface's, and
// extra (the MCP aggregator's).
func New(m *mastio.Mastio, log *zap.Logger, extra Routes) *Handler {
	h := &Handler{m: m, log: log, mux: http.NewServeMux(), paths: map[string]bool{}}
	own := map[string]http.HandlerFunc{
		"GET /healthz": func(w http.ResponseWriter, r *http.Request) {
			httpjson.Write(w, 200, map[string]string{"status": "ok"})
		},
		"GET /health":     h.health,
		"GET /readyz":     h.readyz,
		"GET /pki/ca.crt": h.caCert,

		"GET /.well-known/jwks.json":                  h.jwks,
		"GET /.well-known/jwks-local.json":            h.jwks,
		"GET /.well-known/oauth-authorization-server": h.authorizationServer,
		"GET /.well-known/oauth-protected-resource":   h.protectedResource,
		"GET /.well-known/oauth-protected-resource/":  h.protectedResource,

		"POST /v1/enrollment/start":               h.startEnrollment,
		"GET /v1/enrollment/{sid}/status":         h.enrollmentStatus,
		"POST /v1/auth/token":                     h.token,
		"POST /v1/auth/login-challenge":           h.withAgent(h.loginChallenge),
		"POST /v1/auth/sign-challenged-assertion": h.withAgent(h.signChallengedAssertion),
		"POST /v1/auth/sign-assertion":            h.withAgent(h.signAssertion),
		"GET /v1/agents/me":                       h.withAgent(h.me),
		"GET /v1/agents/search":                   h.withAgent(h.searchAgents),
	}
	for pattern, fn := range own {
		h.handle(pattern, fn)
	}
	surfacesMu.Lock()
	for _, s := range surfaces {
		for pattern, handler := range s(m, log) {
			h.handle(pattern, handler)
		}
	}
	surfacesMu.Unlock()
	for pattern, handler := range extra {
		h.handle(pattern, handler)
	}
	return h
}

// handle registers a route. A route outside the owned namespaces must be
// a plain path (no wildcard), which Owns then knows.
func (h *Handler) handle(pattern string, handler http.Handler) {
	h.mux.Handle(pattern, handler)
	path := pattern
	if _, p, ok := strings.Cut(pattern, " "); ok {
		path = p
	}
	if !inOwnedNamespace(path) {
		if strings.ContainsAny(path, "{}") || strings.HasSuffix(path, "/") {
			panic("endpoints: route " + pattern + " is outside the Mastio's namespaces and not a plain path")
		}
		h.paths[path] = true
	}
}

func (h *Handler) health(w http.ResponseWriter, r *http.Request) {
	httpjson.Write(w, 200, map[string]string{"status": "ok", "version": mastio.Version()})
}

// ownedPrefixes are the namespaces the Mastio answers for entirely.
var ownedPrefixes = []string{"/v1/", "/registry/", "/proxy/", "/pki/", "/.well-known/"}

// Owns reports whether r is the Mastio's to answer: a path of its routes
// (whatever the method) or in its namespaces. The caller passes other
// requests on.
func (h *Handler) Owns(r *http.Request) bool {
	return h.paths[r.URL.Path] || inOwnedNamespace(r.URL.Path)
}

// inOwnedNamespace reports a path under one of ownedPrefixes (or the
// prefix itself without its slash).
func inOwnedNamespace(path string) bool {
	for _, p := range ownedPrefixes {
		if strings.HasPrefix(path, p) || path+"/" == p {
			return true
		}
	}
	return false
}

// ServeHTTP answers a request Owns said is the Mastio's.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if strings.HasPrefix(path, "/v1/") || strings.HasPrefix(path, "/registry/") || path == "/proxy/admin/agents" {
		// TLS early data can be replayed; nothing here may act on it.
		if r.TLS != nil && !r.TLS.HandshakeComplete {
			httpjson.Error(w, http.StatusTooEarly, "too_early", "retry after the TLS handshake completes")
			return
		}
		if strings.HasPrefix(path, "/v1/") {
			// Clients pick up the current nonce from any response.
			if n := h.m.Nonce(); n != "" {
				w.Header().Set("DPoP-Nonce", n)
			}
		}
	}
	if !canonical(r.URL.EscapedPath()) {
		// ServeMux would redirect to the cleaned path; a Mastio path is
		// only ever served as it is spelled.
		NotFound(w, path)
		return
	}
	handler, pattern := h.mux.Handler(r)
	if pattern != "" {
		h.mux.ServeHTTP(w, r) // sets the path values
		return
	}
	// No route: the mux would answer 404, or 405 for a path that another
	// method serves. Both are answered in JSON, as everything else is.
	if allow := allowed(handler, r); allow != "" {
		w.Header().Set("Allow", allow)
		httpjson.Error(w, http.StatusMethodNotAllowed, "method_not_allowed", "use "+strings.ReplaceAll(allow, ", ", " or "))
		return
	}
	NotFound(w, path)
}

// canonical reports whether p is a clean path, as ServeMux wants it
// (otherwise it answers with a redirect).
func canonical(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	clean := pathpkg.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return clean == p
}

// allowed is the Allow header of the mux's answer when it is 405 (the
// path is served for other methods), else "".
func allowed(fallback http.Handler, r *http.Request) string {
	probe := &statusProbe{header: http.Header{}}
	fallback.ServeHTTP(probe, r)
	if probe.status != http.StatusMethodNotAllowed {
		return ""
	}
	return probe.header.Get("Allow")
}

// statusProbe records what the mux's fallback handler would answer.
type statusProbe struct {
	header http.Header
	status int
}

func (p *statusProbe) Header() http.Header         { return p.header }
func (p *statusProbe) Write(b []byte) (int, error) { return len(b), nil }
func (p *statusProbe) WriteHeader(status int)      { p.status = status }

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
	{"/v1/admin/", "the admin API is not built into this Caddy: build it with github.com/caddy-mastio/caddy-mastio, which includes package admin"},
	{"/proxy/", "no dashboard page here: the dashboard starts at /proxy/ (in builds of github.com/caddy-mastio/caddy-mastio, which include package admin/dashboard)"},
}

// NotFound answers 404 for a path in the Mastio's namespaces, naming what
// to use instead for the original Mastio's routes this one does not have.
func NotFound(w http.ResponseWriter, path string) {
	msg := "nothing is served at " + path + " (see the README for the Mastio's endpoints)"
	for _, np := range notProvided {
		if strings.HasPrefix(path, np.prefix) || path == strings.TrimSuffix(np.prefix, "/") {
			msg = np.message
			break
		}
	}
	httpjson.Error(w, http.StatusNotFound, "not_found", msg)
}

// internalError answers 500; the cause goes to the log only.
func (h *Handler) internalError(w http.ResponseWriter, r *http.Request, err error) {
	h.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
	if mastio.Unavailable(err) {
		httpjson.DatabaseUnavailable(w)
		return
	}
	if reason, ok := mastio.KeyStoreUnavailable(err); ok {
		httpjson.KeyStoreUnavailable(w, reason)
		return
	}
	httpjson.Error(w, 500, "internal_error", "the request could not be completed")
}

// anonymousLimited applies route's per-address and global limits to r; if
// either is exhausted it answers 429 with Retry-After and returns true.
// what names the requests in the message.
func (h *Handler) anonymousLimited(w http.ResponseWriter, r *http.Request, route, what string) bool {
	ip := h.m.ClientIP(r)
	ok, scope, wait := h.m.AllowAnonymous(route, ip)
	if ok {
		return false
	}
	h.m.LogDecision(r, "rate limited", mastio.Decision{Kind: mastio.KindRateLimit, Reason: route + "_" + scope, RemoteIP: ip,
		Fields: []zap.Field{zap.String("route", route), zap.String("scope", scope)}})
	httpjson.SetRetryAfter(w, wait)
	msg := "too many " + what + " requests from this address; retry later"
	if scope == "global" {
		msg = "too many " + what + " requests from all addresses together; retry later"
	}
	httpjson.Error(w, http.StatusTooManyRequests, "rate_limited", msg)
	return true
}
