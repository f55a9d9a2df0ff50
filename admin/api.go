package admin

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/ratelimit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// SecretHeader carries the admin secret.
const SecretHeader = "X-Admin-Secret"

// MaxBodyBytes bounds admin request bodies.
const MaxBodyBytes = 64 << 10

// API serves the admin routes. Every route requires the X-Admin-Secret
// header; a missing secret is 401, a wrong one 403, and after repeated
// failures from one address every attempt from it is 429 for a while
// (correct secret or not). Failures are audited (admin.auth_failed).
//
//	GET    /v1/admin/agents                 list agents (also GET /proxy/admin/agents)
//	POST   /v1/admin/agents                 create an agent
//	GET    /v1/admin/agents/{id}            one agent
//	DELETE /v1/admin/agents/{id}            revoke (also POST .../revoke, POST /registry/agents/{id}/revoke)
//	POST   /v1/admin/agents/{id}/rotate-cert  new certificate (also POST /registry/agents/{id}/rotate-cert)
//	POST   /v1/admin/agents/{id}/dpop-jwk   register the agent's DPoP public key
//	POST   /v1/admin/keys/rotate            rotate the access-token signing key
//	GET    /v1/admin/policies               the MCP policy (config and stored rules)
//	PUT    /v1/admin/policies               replace the stored rules (text, or {"rules": "..."})
//	POST   /v1/admin/policies/check         dry run: {"agent_id","action","server","name"}
//	GET    /v1/admin/mcp-servers            the MCP servers of the /v1/mcp aggregator (no secrets)
//	POST   /v1/admin/mcp-servers            register: {"name","url","headers","bearer_token","prefix","timeout_seconds",
//	                                        "max_argument_bytes","agent_rate","item_rate"}
//	DELETE /v1/admin/mcp-servers/{name}     unregister a server registered here
//	POST   /v1/admin/bindings               {"agent_id","server"}: allow the agent everything on the server
//	DELETE /v1/admin/bindings               {"agent_id","server"}: remove that binding
//	GET    /v1/admin/enrollments            list enrollment sessions
//	POST   /v1/admin/enrollments/{sid}/approve|reject
//
// {id} is the agent id "<org>::<name>", raw or URL-escaped; a bare name is
// taken under this organisation.
type API struct {
	Registry *registry.Registry
	Audit    *audit.Log
	Logger   *zap.Logger
	// Secret returns the admin secret in force.
	Secret func() *Secret
	// Policy returns the issuance settings in force.
	Policy func() registry.Policy
	// Failures limits failed secret attempts per client address: over it,
	// every attempt from the address is refused, right secret or not.
	Failures *ratelimit.Limiter
	// GlobalFailures limits failed secret attempts from all addresses
	// together (key "all"): over it, wrong secrets are refused with 429
	// without being audited one by one (their count is carried by the
	// next audited failure), so that many addresses cannot flood the audit
	// chain; a right secret still works, so an attack cannot lock the
	// operator out.
	GlobalFailures *ratelimit.Limiter
	// RateLimited, if set, is called for every request refused by a
	// limit, with its scope (ip or global).
	RateLimited func(scope string)
	// ClientIP returns the caller's address.
	ClientIP func(*http.Request) string
	// RotateKeys rotates the access-token signing key.
	RotateKeys func(ctx context.Context, grace time.Duration, details map[string]any) (any, error)
	// Policies holds the MCP policy.
	Policies PolicyStore
	// Upstreams is the MCP server registry.
	Upstreams Upstreams

	// unaudited counts the failures refused by GlobalFailures since the
	// last audited one.
	unaudited atomic.Int64
}

// Upstreams is the MCP server registry as the admin API manages it. The
// server settings are the JSON of caddymastio.MCPServer.
type Upstreams interface {
	ListServers(ctx context.Context) ([]map[string]any, error)
	// PutServerJSON registers or replaces a stored server from its JSON
	// settings; a literal bearerToken goes to the key store.
	PutServerJSON(ctx context.Context, name string, settings json.RawMessage, bearerToken string, details map[string]any) error
	DeleteServer(ctx context.Context, name string, details map[string]any) (bool, error)
}

// PolicyStore is the MCP policy as the admin API manages it.
type PolicyStore interface {
	// PolicyText returns the rules from the config (read-only here) and
	// the stored rules.
	PolicyText() (config, stored string)
	// Rules returns every rule in force.
	Rules() []policy.Rule
	// SetPolicy replaces the stored rules after validating them.
	SetPolicy(ctx context.Context, text string, details map[string]any) ([]policy.Rule, error)
	// CheckPolicy answers "may this agent do this?" with the deciding rule.
	CheckPolicy(agentID, action, resource string) (policy.Decision, error)
	// SetBinding adds or removes the rule "allow agent:<id> * <server>/*".
	SetBinding(ctx context.Context, agentID, server string, present bool, details map[string]any) ([]policy.Rule, error)
}

// Handles reports whether path belongs to the admin API.
func Handles(path string) bool {
	return strings.HasPrefix(path, "/v1/admin/") || path == "/v1/admin" ||
		strings.HasPrefix(path, "/registry/") || path == "/proxy/admin/agents"
}

// ServeHTTP authenticates and dispatches an admin request.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.authenticate(w, r) {
		return
	}
	segs, err := splitPath(r.URL.EscapedPath())
	if err != nil {
		httpjson.Error(w, 400, "invalid_request", err.Error())
		return
	}
	var allow []string
	route := func(method string, h func(http.ResponseWriter, *http.Request, []string), args ...string) bool {
		if r.Method != method {
			allow = append(allow, method)
			return false
		}
		h(w, r, args)
		return true
	}
	handled := false
	switch {
	case match(segs, "v1", "admin", "agents") || match(segs, "proxy", "admin", "agents"):
		handled = route("GET", a.listAgents) || (segs[0] == "v1" && route("POST", a.createAgent))
	case match(segs, "v1", "admin", "agents", "*"):
		handled = route("GET", a.getAgent, segs[3]) || route("DELETE", a.revoke, segs[3])
	case match(segs, "v1", "admin", "agents", "*", "revoke"), match(segs, "registry", "agents", "*", "revoke"):
		handled = route("POST", a.revoke, segs[len(segs)-2])
	case match(segs, "v1", "admin", "agents", "*", "rotate-cert"), match(segs, "registry", "agents", "*", "rotate-cert"):
		handled = route("POST", a.rotate, segs[len(segs)-2])
	case match(segs, "v1", "admin", "agents", "*", "dpop-jwk"):
		handled = route("POST", a.setDPoP, segs[3])
	case match(segs, "v1", "admin", "keys", "rotate"):
		handled = route("POST", a.rotateKeys)
	case match(segs, "v1", "admin", "policies"):
		handled = route("GET", a.getPolicies) || route("PUT", a.putPolicies)
	case match(segs, "v1", "admin", "policies", "check"):
		handled = route("POST", a.checkPolicy)
	case match(segs, "v1", "admin", "mcp-servers"):
		handled = route("GET", a.listServers) || route("POST", a.putServer)
	case match(segs, "v1", "admin", "mcp-servers", "*"):
		handled = route("DELETE", a.deleteServer, segs[3])
	case match(segs, "v1", "admin", "bindings"):
		handled = route("POST", a.binding(true)) || route("DELETE", a.binding(false))
	case match(segs, "v1", "admin", "enrollments"):
		handled = route("GET", a.listEnrollments)
	case match(segs, "v1", "admin", "enrollments", "*", "approve"):
		handled = route("POST", a.approve, segs[3])
	case match(segs, "v1", "admin", "enrollments", "*", "reject"):
		handled = route("POST", a.reject, segs[3])
	default:
		httpjson.Error(w, 404, "not_found", "no admin route "+r.URL.Path)
		return
	}
	if !handled {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		httpjson.Error(w, 405, "method_not_allowed", fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path))
	}
}

func splitPath(escaped string) ([]string, error) {
	parts := strings.Split(strings.Trim(escaped, "/"), "/")
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil {
			return nil, fmt.Errorf("bad path segment %q", p)
		}
		parts[i] = u
	}
	return parts, nil
}

func match(segs []string, pattern ...string) bool {
	if len(segs) != len(pattern) {
		return false
	}
	for i, p := range pattern {
		if p != "*" && segs[i] != p || p == "*" && segs[i] == "" {
			return false
		}
	}
	return true
}

func (a *API) authenticate(w http.ResponseWriter, r *http.Request) bool {
	ip := a.ClientIP(r)
	presented := r.Header.Get(SecretHeader)
	// Never let the secret reach access logs or anything downstream.
	r.Header.Del(SecretHeader)
	if ok, wait := a.Failures.Peek(ip); !ok {
		return a.tooMany(w, "ip", wait, "too many failed admin secret attempts from this address; retry later")
	}
	if a.Secret().Match(presented) {
		return true
	}
	reason, status, code, msg := "mismatch", 403, "admin_secret_invalid", "X-Admin-Secret does not match"
	if strings.TrimSpace(presented) == "" {
		reason, status, code, msg = "missing", 401, "admin_secret_required", "the X-Admin-Secret header is required"
	}
	a.Failures.Allow(ip)
	if ok, wait := a.GlobalFailures.Allow("all"); !ok {
		a.unaudited.Add(1)
		return a.tooMany(w, "global", wait, "too many failed admin secret attempts; retry later")
	}
	d := map[string]any{"reason": reason, "remote_ip": ip, "method": r.Method}
	if n := a.unaudited.Swap(0); n > 0 {
		d["unaudited_before"] = n
	}
	if _, err := a.Audit.Append(r.Context(), audit.Event{Type: "admin.auth_failed", Actor: "anonymous", Subject: r.URL.Path,
		Result: audit.ResultDenied, Details: d}); err != nil {
		a.Logger.Error("auditing a failed admin secret", zap.Error(err))
		httpjson.Error(w, 503, "audit_unavailable", "the audit log cannot be written")
		return false
	}
	a.Logger.Warn("admin secret refused", zap.String("reason", reason), zap.String("remote_ip", ip),
		zap.String("method", r.Method), zap.String("path", r.URL.Path))
	httpjson.Error(w, status, code, msg)
	return false
}

// tooMany answers 429 for an admin secret attempt refused by a limit.
func (a *API) tooMany(w http.ResponseWriter, scope string, wait time.Duration, msg string) bool {
	if a.RateLimited != nil {
		a.RateLimited(scope)
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	httpjson.Error(w, 429, "too_many_failed_attempts", msg)
	return false
}

func (a *API) details(r *http.Request) map[string]any {
	return map[string]any{"remote_ip": a.ClientIP(r)}
}

// fail writes err: registry refusals and decoding problems as they are,
// anything else as a 500 whose cause goes to the log only.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var re *registry.Error
	var p *httpjson.Problem
	switch {
	case errors.As(err, &re):
		httpjson.WriteProblem(w, &httpjson.Problem{Status: re.Status, Code: re.Code, Message: re.Message, Field: re.Field})
	case errors.As(err, &p):
		httpjson.WriteProblem(w, p)
	default:
		a.Logger.Error("admin request failed", zap.String("path", r.URL.Path), zap.Error(err))
		httpjson.Error(w, 500, "internal_error", "the request could not be completed; nothing was changed unless the audit log says so")
	}
}

func (a *API) agentID(raw string) (string, error) {
	name, err := a.Registry.ResolveAgentName("agent_id", raw)
	if err != nil {
		var re *registry.Error
		if errors.As(err, &re) {
			return "", &registry.Error{Status: 404, Code: "agent_not_found", Message: fmt.Sprintf("no agent %s: %s", raw, re.Message)}
		}
		return "", err
	}
	return a.Registry.AgentID(name), nil
}

func (a *API) listAgents(w http.ResponseWriter, r *http.Request, _ []string) {
	agents, err := a.Registry.ListAgents(r.Context(), r.URL.Query().Get("status"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if agents == nil {
		agents = []*registry.Agent{}
	}
	httpjson.Write(w, 200, map[string]any{"agents": agents, "count": len(agents)})
}

func (a *API) getAgent(w http.ResponseWriter, r *http.Request, args []string) {
	id, err := a.agentID(args[0])
	if err == nil {
		var agent *registry.Agent
		if agent, err = a.Registry.GetAgent(r.Context(), id); err == nil {
			httpjson.Write(w, 200, agent)
			return
		}
	}
	a.fail(w, r, err)
}

// keyInput is the optional key material of create and rotate requests.
type keyInput struct {
	PublicKeyPEM string `json:"public_key_pem,omitempty"`
	CSRPEM       string `json:"csr_pem,omitempty"`
}

func (k keyInput) publicKey() (crypto.PublicKey, error) {
	switch {
	case k.PublicKeyPEM != "" && k.CSRPEM != "":
		return nil, &registry.Error{Status: 400, Code: "invalid_request", Field: "csr_pem", Message: "give public_key_pem or csr_pem, not both"}
	case k.PublicKeyPEM != "":
		pub, _, err := registry.ParsePublicKeyPEM(k.PublicKeyPEM)
		if err != nil {
			return nil, &registry.Error{Status: 400, Code: "invalid_request", Field: "public_key_pem", Message: "public_key_pem: " + err.Error()}
		}
		return pub, nil
	case k.CSRPEM != "":
		pub, err := registry.ParseCSRPEM(k.CSRPEM)
		if err != nil {
			return nil, &registry.Error{Status: 400, Code: "invalid_request", Field: "csr_pem", Message: "csr_pem: " + err.Error()}
		}
		return pub, nil
	}
	return nil, nil
}

// issuedResponse is the answer to create and rotate.
type issuedResponse struct {
	AgentID       string          `json:"agent_id"`
	SPIFFEID      string          `json:"spiffe_id"`
	CertPEM       string          `json:"cert_pem"`
	CertSHA256    string          `json:"cert_sha256"`
	NotAfter      time.Time       `json:"not_after"`
	PrivateKeyPEM string          `json:"private_key_pem,omitempty"`
	Note          string          `json:"note,omitempty"`
	Agent         *registry.Agent `json:"agent"`
}

func issued(iss *registry.Issued) issuedResponse {
	resp := issuedResponse{AgentID: iss.Agent.AgentID, SPIFFEID: iss.Agent.SPIFFEID, CertPEM: iss.CertPEM,
		NotAfter: iss.Cert.NotAfter, PrivateKeyPEM: iss.KeyPEM, Agent: iss.Agent}
	if len(iss.Agent.Certificates) > 0 {
		resp.CertSHA256 = iss.Agent.Certificates[0].SHA256
	}
	if iss.KeyPEM != "" {
		resp.Note = "private_key_pem is shown once and not stored by the Mastio: keep it now"
	}
	return resp
}

func (a *API) createAgent(w http.ResponseWriter, r *http.Request, _ []string) {
	var req struct {
		AgentName    string          `json:"agent_name"`
		DisplayName  string          `json:"display_name"`
		Capabilities []string        `json:"capabilities"`
		Groups       []string        `json:"groups"`
		DPoPJWK      json.RawMessage `json:"dpop_jwk"`
		keyInput
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if req.AgentName == "" {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "agent_name", Message: "agent_name is required"})
		return
	}
	name, err := a.Registry.ResolveAgentName("agent_name", req.AgentName)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pub, err := req.publicKey()
	if err != nil {
		a.fail(w, r, err)
		return
	}
	jkt := ""
	if len(req.DPoPJWK) > 0 && string(req.DPoPJWK) != "null" {
		if jkt, err = registry.JWKThumbprint(req.DPoPJWK); err != nil {
			a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "dpop_jwk", Message: "dpop_jwk: " + err.Error()})
			return
		}
	}
	iss, err := a.Registry.CreateAgent(r.Context(), a.Policy(), registry.NewAgent{
		Name: name, DisplayName: req.DisplayName, Capabilities: req.Capabilities, Groups: req.Groups,
		PublicKey: pub, DPoPJKT: jkt, Method: "admin", Actor: "admin", AuditDetails: a.details(r)})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, 201, issued(iss))
}

func (a *API) revoke(w http.ResponseWriter, r *http.Request, args []string) {
	var req struct {
		Reason string `json:"reason"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, true, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if req.Reason == "" {
		req.Reason = r.URL.Query().Get("reason")
	}
	id, err := a.agentID(args[0])
	if err != nil {
		a.fail(w, r, err)
		return
	}
	agent, err := a.Registry.Revoke(r.Context(), id, req.Reason, "admin", a.details(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Logger.Info("agent revoked", zap.String("agent_id", id), zap.String("reason", agent.RevokedReason))
	httpjson.Write(w, 200, map[string]any{"agent_id": id, "status": agent.Status, "revoked_at": agent.RevokedAt,
		"reason": agent.RevokedReason, "agent": agent})
}

func (a *API) rotate(w http.ResponseWriter, r *http.Request, args []string) {
	var req struct {
		GraceSeconds int64 `json:"grace_seconds"`
		keyInput
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, true, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	id, err := a.agentID(args[0])
	if err != nil {
		a.fail(w, r, err)
		return
	}
	pub, err := req.publicKey()
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if req.GraceSeconds < 0 || req.GraceSeconds > int64(registry.MaxGrace/time.Second) {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "grace_seconds",
			Message: fmt.Sprintf("grace_seconds must be between 0 and %d", int64(registry.MaxGrace/time.Second))})
		return
	}
	iss, err := a.Registry.RotateCert(r.Context(), a.Policy(), id, registry.Rotation{
		PublicKey: pub, Grace: time.Duration(req.GraceSeconds) * time.Second, Actor: "admin", Details: a.details(r)})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Logger.Info("agent certificate rotated", zap.String("agent_id", id), zap.Int64("grace_seconds", req.GraceSeconds))
	httpjson.Write(w, 200, issued(iss))
}

func (a *API) setDPoP(w http.ResponseWriter, r *http.Request, args []string) {
	var req struct {
		DPoPJWK json.RawMessage `json:"dpop_jwk"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if len(req.DPoPJWK) == 0 || string(req.DPoPJWK) == "null" {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "dpop_jwk", Message: "dpop_jwk is required"})
		return
	}
	id, err := a.agentID(args[0])
	if err != nil {
		a.fail(w, r, err)
		return
	}
	agent, err := a.Registry.SetDPoPKey(r.Context(), id, req.DPoPJWK, "admin", a.details(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, 200, map[string]any{"agent_id": id, "dpop_jkt": agent.DPoPJKT, "agent": agent})
}

func (a *API) rotateKeys(w http.ResponseWriter, r *http.Request, _ []string) {
	var req struct {
		GraceSeconds int64 `json:"grace_seconds"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, true, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if req.GraceSeconds < 0 || req.GraceSeconds > 90*24*3600 {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "grace_seconds",
			Message: "grace_seconds must be between 0 (default: 24h) and 7776000 (90 days)"})
		return
	}
	rot, err := a.RotateKeys(r.Context(), time.Duration(req.GraceSeconds)*time.Second, a.details(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Logger.Info("signing key rotated", zap.Any("rotation", rot))
	httpjson.Write(w, 200, rot)
}

func (a *API) getPolicies(w http.ResponseWriter, r *http.Request, _ []string) {
	cfg, stored := a.Policies.PolicyText()
	httpjson.Write(w, 200, map[string]any{"config": cfg, "stored": stored, "rules": a.Policies.Rules()})
}

func (a *API) putPolicies(w http.ResponseWriter, r *http.Request, _ []string) {
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		httpjson.Error(w, 413, "request_too_large", fmt.Sprintf("the policy exceeds %d bytes", MaxBodyBytes))
		return
	}
	text := string(raw)
	if t := strings.TrimSpace(text); strings.HasPrefix(t, "{") {
		var req struct {
			Rules string `json:"rules"`
		}
		r.Body = io.NopCloser(strings.NewReader(t))
		if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
			httpjson.WriteProblem(w, p)
			return
		}
		text = req.Rules
	}
	rules, err := a.Policies.SetPolicy(r.Context(), text, a.details(r))
	var pe *policy.ParseError
	if errors.As(err, &pe) {
		httpjson.Write(w, 400, map[string]any{"error": "invalid_policy", "message": pe.Error(), "line": pe.Line, "rule": pe.Text})
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.Logger.Info("MCP policy updated", zap.Int("rules", len(rules)))
	httpjson.Write(w, 200, map[string]any{"rules": rules, "count": len(rules)})
}

func (a *API) checkPolicy(w http.ResponseWriter, r *http.Request, _ []string) {
	var req struct {
		AgentID string `json:"agent_id"`
		Action  string `json:"action"`
		Server  string `json:"server"`
		Name    string `json:"name"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if req.Action == "" {
		req.Action = "tools/call"
	}
	id, err := a.agentID(req.AgentID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Server == "" || req.Name == "" {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "server", Message: "server and name are required"})
		return
	}
	d, err := a.Policies.CheckPolicy(id, req.Action, req.Server+"/"+req.Name)
	if err != nil {
		a.fail(w, r, &registry.Error{Status: 404, Code: "agent_not_found", Message: err.Error()})
		return
	}
	httpjson.Write(w, 200, map[string]any{"agent_id": id, "action": req.Action, "resource": req.Server + "/" + req.Name,
		"allowed": d.Allowed, "rule": d.Rule, "reason": d.Reason})
}

func (a *API) binding(present bool) func(http.ResponseWriter, *http.Request, []string) {
	return func(w http.ResponseWriter, r *http.Request, _ []string) {
		var req struct {
			AgentID string `json:"agent_id"`
			Server  string `json:"server"`
		}
		if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
			httpjson.WriteProblem(w, p)
			return
		}
		id, err := a.agentID(req.AgentID)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if req.Server == "" || strings.ContainsAny(req.Server, "/ \t*") {
			a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "server", Message: "server must be a server name"})
			return
		}
		rules, err := a.Policies.SetBinding(r.Context(), id, req.Server, present, a.details(r))
		if err != nil {
			a.fail(w, r, err)
			return
		}
		httpjson.Write(w, 200, map[string]any{"agent_id": id, "server": req.Server, "bound": present, "rules": rules})
	}
}

func (a *API) listServers(w http.ResponseWriter, r *http.Request, _ []string) {
	list, err := a.Upstreams.ListServers(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, 200, map[string]any{"servers": list, "count": len(list)})
}

func (a *API) putServer(w http.ResponseWriter, r *http.Request, _ []string) {
	var req struct {
		Name             string            `json:"name"`
		URL              string            `json:"url"`
		Headers          map[string]string `json:"headers"`
		BearerToken      string            `json:"bearer_token"`
		Prefix           string            `json:"prefix"`
		TimeoutSeconds   int64             `json:"timeout_seconds"`
		MaxArgumentBytes int64             `json:"max_argument_bytes"`
		AgentRate        int               `json:"agent_rate"`
		ItemRate         int               `json:"item_rate"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	settings, _ := json.Marshal(map[string]any{"url": req.URL, "headers": req.Headers, "prefix": req.Prefix,
		"timeout": req.TimeoutSeconds * int64(time.Second), "max_argument_bytes": req.MaxArgumentBytes,
		"agent_rate": req.AgentRate, "item_rate": req.ItemRate})
	if err := a.Upstreams.PutServerJSON(r.Context(), req.Name, settings, req.BearerToken, a.details(r)); err != nil {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Message: err.Error()})
		return
	}
	list, _ := a.Upstreams.ListServers(r.Context())
	for _, s := range list {
		if s["name"] == req.Name {
			httpjson.Write(w, 201, s)
			return
		}
	}
	httpjson.Write(w, 201, map[string]any{"name": req.Name})
}

func (a *API) deleteServer(w http.ResponseWriter, r *http.Request, args []string) {
	found, err := a.Upstreams.DeleteServer(r.Context(), args[0], a.details(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !found {
		httpjson.Error(w, 404, "server_not_found", "no MCP server "+args[0]+" registered through the admin API")
		return
	}
	httpjson.Write(w, 200, map[string]any{"name": args[0], "removed": true})
}

func (a *API) listEnrollments(w http.ResponseWriter, r *http.Request, _ []string) {
	list, err := a.Registry.ListEnrollments(r.Context(), r.URL.Query().Get("status"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, 200, map[string]any{"enrollments": list, "count": len(list)})
}

func (a *API) approve(w http.ResponseWriter, r *http.Request, args []string) {
	var req struct {
		AgentID      string   `json:"agent_id"`
		Capabilities []string `json:"capabilities"`
		Groups       []string `json:"groups"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	if req.AgentID == "" {
		a.fail(w, r, &registry.Error{Status: 400, Code: "invalid_request", Field: "agent_id", Message: "agent_id is required"})
		return
	}
	e, agent, err := a.Registry.Approve(r.Context(), a.Policy(), args[0], registry.Approval{
		AgentName: req.AgentID, Capabilities: req.Capabilities, Groups: req.Groups, Actor: "admin", Details: a.details(r)})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, 200, map[string]any{"session_id": e.SessionID, "status": e.Status, "agent_id": e.AgentID, "agent": agent})
}

func (a *API) reject(w http.ResponseWriter, r *http.Request, args []string) {
	var req struct {
		Reason string `json:"reason"`
	}
	if p := httpjson.Decode(w, r, MaxBodyBytes, true, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	e, err := a.Registry.Reject(r.Context(), args[0], req.Reason, "admin", a.details(r))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, 200, map[string]any{"session_id": e.SessionID, "status": e.Status, "rejection_reason": e.RejectionReason})
}
