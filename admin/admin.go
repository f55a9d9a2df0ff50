// Package admin is the Mastio's admin API: typed operations over the core
// (package mastio) and their HTTP routes under /v1/admin/ (and the
// runbook's /registry/agents/{id}/revoke|rotate-cert and
// /proxy/admin/agents), every one behind the X-Admin-Secret header. A
// missing secret is 401, a wrong one 403, and after repeated failures from
// one address every attempt from it is 429 for a while (right secret or
// not); failures are audited (admin.auth_failed).
//
// The package registers its routes with package endpoints when it is
// linked in (the root package of this module imports it), so that the
// Caddy modules do not depend on it.
//
//	GET    /v1/admin/agents                   list agents (?status=); also GET /proxy/admin/agents
//	POST   /v1/admin/agents                   create an agent (CreateAgentRequest)
//	GET    /v1/admin/agents/{id}              one agent
//	DELETE /v1/admin/agents/{id}              revoke (also POST .../revoke, POST /registry/agents/{id}/revoke)
//	POST   /v1/admin/agents/{id}/rotate-cert  new certificate (also POST /registry/agents/{id}/rotate-cert)
//	POST   /v1/admin/agents/{id}/dpop-jwk     register the agent's DPoP public key
//	POST   /v1/admin/keys/rotate              rotate the access-token signing key
//	GET    /v1/admin/policies                 the MCP policy (config and stored rules)
//	PUT    /v1/admin/policies                 replace the stored rules (text, or {"rules": "..."})
//	POST   /v1/admin/policies/check           dry run (PolicyCheckRequest)
//	GET    /v1/admin/mcp-servers              the MCP servers of the /v1/mcp aggregator (no secrets)
//	POST   /v1/admin/mcp-servers              register one (PutServerRequest)
//	DELETE /v1/admin/mcp-servers/{name}       unregister a server registered here
//	POST   /v1/admin/bindings                 allow an agent everything on a server (BindingRequest)
//	DELETE /v1/admin/bindings                 remove that binding
//	GET    /v1/admin/enrollments              list enrollment sessions (?status=)
//	POST   /v1/admin/enrollments/{sid}/approve|reject
//	GET    /v1/admin/audit/export             the audit rows, streamed (audit.ParseExportQuery)
//	GET    /v1/admin/audit/head               the chain's head, signed (AuditHead)
//	GET    /v1/admin/audit/verify             walk the chain (?from_seq, ?to_seq) (Verified)
//	POST   /v1/admin/audit/bundle             a verifiable .tar.gz of a range (BundleRequest)
//	POST   /v1/admin/audit/archive            remove rows held in a verified archive (ArchiveRequest)
//
// {id} is the agent id "<org>::<name>", raw or URL-escaped; a bare name is
// taken under this organisation.
package admin

import (
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

func init() {
	endpoints.RegisterSurface("admin", func(m *mastio.Mastio, log *zap.Logger) endpoints.Routes {
		return New(m, log).Routes()
	})
}

// SecretHeader carries the admin secret.
const SecretHeader = "X-Admin-Secret"

// MaxBodyBytes bounds admin request bodies.
const MaxBodyBytes = 64 << 10

// API is the admin operations of one configuration's Mastio.
type API struct {
	m   *mastio.Mastio
	log *zap.Logger
}

// New returns the admin API over m.
func New(m *mastio.Mastio, log *zap.Logger) *API { return &API{m: m, log: log} }

// Caller is who asks for an operation, for the audit log.
type Caller struct {
	// Actor is the audit actor: "admin" (the site's admin API),
	// "caddy-admin" (Caddy's admin endpoint), "dashboard".
	Actor string
	// RemoteIP is the caller's address, when it has one.
	RemoteIP string
}

// bind makes c the actor of the operations r's context runs (see
// mastio.WithActor).
func (c Caller) bind(r *http.Request) *http.Request {
	return r.WithContext(mastio.WithActor(r.Context(), c.Actor))
}

func (c Caller) details() map[string]any {
	if c.RemoteIP == "" {
		return map[string]any{}
	}
	return map[string]any{"remote_ip": c.RemoteIP}
}

// authenticated checks the admin secret, then serves. The secret is
// removed from the request so that nothing downstream (an access log) can
// see it.
func (a *API) authenticated(serve func(http.ResponseWriter, *http.Request, Caller)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		presented := r.Header.Get(SecretHeader)
		r.Header.Del(SecretHeader)
		ip := a.m.ClientIP(r)
		check := a.m.CheckAdminSecret(r.Context(), ip, r.Method, r.URL.Path, presented)
		if !check.OK {
			if check.RetryAfter > 0 {
				httpjson.SetRetryAfter(w, check.RetryAfter)
			}
			httpjson.Error(w, check.Status, check.Code, check.Message)
			return
		}
		c := Caller{Actor: mastio.DefaultActor, RemoteIP: ip}
		serve(w, c.bind(r), c)
	}
}

// fail answers err: a registry refusal or decoding problem as it is,
// anything else 500 with the cause in the log only.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	if reason, ok := mastio.KeyStoreUnavailable(err); ok {
		a.log.Error("admin request failed", zap.String("path", r.URL.Path), zap.Error(err))
		httpjson.KeyStoreUnavailable(w, reason)
		return
	}
	var re *registry.Error
	var p *httpjson.Problem
	switch {
	case errors.As(err, &re):
		httpjson.WriteProblem(w, &httpjson.Problem{Status: re.Status, Code: re.Code, Message: re.Message, Field: re.Field})
	case errors.As(err, &p):
		httpjson.WriteProblem(w, p)
	case mastio.Unavailable(err):
		a.log.Error("admin request failed", zap.String("path", r.URL.Path), zap.Error(err))
		httpjson.DatabaseUnavailable(w)
	default:
		a.log.Error("admin request failed", zap.String("path", r.URL.Path), zap.Error(err))
		httpjson.Error(w, 500, "internal_error", "the request could not be completed; nothing was changed unless the audit log says so")
	}
}

// decode reads a JSON body into v; false after answering a bad one.
func decode(w http.ResponseWriter, r *http.Request, allowEmpty bool, v any) bool {
	if p := httpjson.Decode(w, r, MaxBodyBytes, allowEmpty, v); p != nil {
		httpjson.WriteProblem(w, p)
		return false
	}
	return true
}

// answer writes v with status, or fails with err.
func (a *API) answer(w http.ResponseWriter, r *http.Request, status int, v any, err error) {
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, status, v)
}

// invalid is a 400 naming the field.
func invalid(field, format string, args ...any) error {
	return &registry.Error{Status: 400, Code: "invalid_request", Field: field, Message: fmt.Sprintf(format, args...)}
}

// agentID resolves an agent id or bare name of this organisation.
func (a *API) agentID(raw string) (string, error) {
	reg := a.m.Registry()
	name, err := reg.ResolveAgentName("agent_id", raw)
	if err != nil {
		var re *registry.Error
		if errors.As(err, &re) {
			return "", &registry.Error{Status: 404, Code: "agent_not_found", Message: fmt.Sprintf("no agent %s: %s", raw, re.Message)}
		}
		return "", err
	}
	return reg.AgentID(name), nil
}
