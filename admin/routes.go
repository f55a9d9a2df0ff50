package admin

import (
	"net/http"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// operation serves one admin operation for caller c over a.
type operation func(a *API, w http.ResponseWriter, r *http.Request, c Caller)

// operations are the admin API's operations by route pattern
// (/v1/admin/... and the runbook's aliases), made once.
var operations = buildOperations()

func buildOperations() map[string]operation {
	revoke := serve(200, true, func(a *API, r *http.Request, c Caller, req RevokeRequest) (*Revoked, error) {
		if req.Reason == "" {
			req.Reason = r.URL.Query().Get("reason")
		}
		return a.Revoke(r.Context(), c, r.PathValue("id"), req)
	})
	rotate := serve(200, true, func(a *API, r *http.Request, c Caller, req RotateCertRequest) (*Issued, error) {
		return a.RotateCert(r.Context(), c, r.PathValue("id"), req)
	})
	listAgents := serve(200, true, func(a *API, r *http.Request, _ Caller, _ struct{}) (*AgentList, error) {
		return a.ListAgents(r.Context(), r.URL.Query().Get("status"))
	})
	binding := func(present bool) operation {
		return serve(200, false, func(a *API, r *http.Request, c Caller, req BindingRequest) (*Binding, error) {
			return a.SetBinding(r.Context(), c, req, present)
		})
	}
	return map[string]operation{
		"GET /v1/admin/agents":    listAgents,
		"GET /proxy/admin/agents": listAgents,
		"POST /v1/admin/agents": serve(201, false, func(a *API, r *http.Request, c Caller, req CreateAgentRequest) (*Issued, error) {
			return a.CreateAgent(r.Context(), c, req)
		}),
		"GET /v1/admin/agents/{id}": serve(200, true, func(a *API, r *http.Request, _ Caller, _ struct{}) (*registry.Agent, error) {
			return a.Agent(r.Context(), r.PathValue("id"))
		}),
		"DELETE /v1/admin/agents/{id}":           revoke,
		"POST /v1/admin/agents/{id}/revoke":      revoke,
		"POST /registry/agents/{id}/revoke":      revoke,
		"POST /v1/admin/agents/{id}/rotate-cert": rotate,
		"POST /registry/agents/{id}/rotate-cert": rotate,
		"POST /v1/admin/agents/{id}/dpop-jwk": serve(200, false, func(a *API, r *http.Request, c Caller, req DPoPKeyRequest) (*DPoPKeySet, error) {
			return a.SetDPoPKey(r.Context(), c, r.PathValue("id"), req)
		}),
		"POST /v1/admin/keys/rotate": serve(200, true, func(a *API, r *http.Request, c Caller, req RotateSigningKeyRequest) (*token.Rotation, error) {
			return a.RotateSigningKey(r.Context(), c, req)
		}),
		"GET /v1/admin/policies": serve(200, true, func(a *API, _ *http.Request, _ Caller, _ struct{}) (*Policies, error) { return a.Policies(), nil }),
		"PUT /v1/admin/policies": (*API).setPolicyHTTP,
		"POST /v1/admin/policies/check": serve(200, false, func(a *API, _ *http.Request, _ Caller, req PolicyCheckRequest) (*PolicyCheck, error) {
			return a.CheckPolicy(req)
		}),
		"GET /v1/admin/mcp-servers": serve(200, true, func(a *API, r *http.Request, _ Caller, _ struct{}) (*ServerList, error) {
			return a.ListServers(r.Context())
		}),
		"POST /v1/admin/mcp-servers": serve(201, false, func(a *API, r *http.Request, c Caller, req PutServerRequest) (map[string]any, error) {
			return a.PutServer(r.Context(), c, req)
		}),
		"DELETE /v1/admin/mcp-servers/{name}": serve(200, true, func(a *API, r *http.Request, c Caller, _ struct{}) (*ServerRemoved, error) {
			return a.DeleteServer(r.Context(), c, r.PathValue("name"))
		}),
		"POST /v1/admin/bindings":   binding(true),
		"DELETE /v1/admin/bindings": binding(false),
		"GET /v1/admin/enrollments": serve(200, true, func(a *API, r *http.Request, _ Caller, _ struct{}) (*EnrollmentList, error) {
			return a.ListEnrollments(r.Context(), r.URL.Query().Get("status"))
		}),
		"POST /v1/admin/enrollments/{sid}/approve": serve(200, false, func(a *API, r *http.Request, c Caller, req ApproveRequest) (*Approved, error) {
			return a.Approve(r.Context(), c, r.PathValue("sid"), req)
		}),
		"GET /v1/admin/audit/export":  (*API).exportAudit,
		"POST /v1/admin/backup":       (*API).backup,
		"POST /v1/admin/audit/bundle": (*API).bundle,
		"POST /v1/admin/audit/archive": serve(200, false, func(a *API, r *http.Request, c Caller, req ArchiveRequest) (*mastio.Archived, error) {
			return a.Archive(r.Context(), c, req)
		}),
		"GET /v1/admin/audit/verify": serve(200, true, func(a *API, r *http.Request, _ Caller, _ struct{}) (*Verified, error) {
			return a.Verify(r.Context(), r.URL.Query())
		}),
		"GET /v1/admin/audit/head": serve(200, true, func(a *API, r *http.Request, _ Caller, _ struct{}) (*AuditHead, error) {
			return a.Head(r.Context())
		}),
		"POST /v1/admin/enrollments/{sid}/reject": serve(200, true, func(a *API, r *http.Request, c Caller, req RejectRequest) (*Rejected, error) {
			return a.Reject(r.Context(), c, r.PathValue("sid"), req)
		}),
	}
}

// Routes are the admin API's HTTP routes on the site, each behind the
// admin secret.
func (a *API) Routes() endpoints.Routes {
	out := endpoints.Routes{}
	for pattern, op := range operations {
		out[pattern] = a.authenticated(func(w http.ResponseWriter, r *http.Request, c Caller) { op(a, w, r, c) })
	}
	return out
}

// serve makes an HTTP route of one typed operation: the body is decoded
// strictly into Req (an empty body is allowed when optional), op runs,
// and its answer is written with status (or its error answered).
func serve[Req, Resp any](status int, optional bool, op func(*API, *http.Request, Caller, Req) (Resp, error)) operation {
	return func(a *API, w http.ResponseWriter, r *http.Request, c Caller) {
		var req Req
		if decode(w, r, optional, &req) {
			resp, err := op(a, r, c, req)
			a.answer(w, r, status, resp, err)
		}
	}
}

// Serve runs the operation of pattern (a route of the admin API, such as
// "GET /v1/admin/audit/export") for c: other surfaces (the dashboard) serve
// an operation exactly as the API does.
func (a *API) Serve(pattern string, w http.ResponseWriter, r *http.Request, c Caller) {
	op, ok := operations[pattern]
	if !ok {
		panic("admin: no operation " + pattern)
	}
	op(a, w, c.bind(r), c)
}
