package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// Policies is the answer to GET /v1/admin/policies: the configuration's
// rules (read-only here), the stored ones, and every rule in force.
type Policies struct {
	Config string        `json:"config"`
	Stored string        `json:"stored"`
	Rules  []policy.Rule `json:"rules"`
}

// Policies returns the MCP policy.
func (a *API) Policies() *Policies {
	return &Policies{Config: a.m.ConfigPolicy(), Stored: a.m.StoredPolicy(), Rules: a.m.PolicyRules()}
}

// RuleSet is the answer to a change of the stored rules.
type RuleSet struct {
	Rules []policy.Rule `json:"rules"`
	Count int           `json:"count"`
}

// SetPolicy validates and replaces the stored rules; a *policy.ParseError
// says which line is wrong.
func (a *API) SetPolicy(ctx context.Context, c Caller, text string) (*RuleSet, error) {
	rules, err := a.m.SetPolicy(ctx, text, c.details())
	if err != nil {
		return nil, err
	}
	a.log.Info("MCP policy updated", zap.Int("rules", len(rules)))
	return &RuleSet{Rules: rules, Count: len(rules)}, nil
}

// setPolicyHTTP takes the rules as text, or as {"rules": "..."}.
func (a *API) setPolicyHTTP(w http.ResponseWriter, r *http.Request, c Caller) {
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
		if p := httpjson.DecodeBytes([]byte(t), &req); p != nil {
			httpjson.WriteProblem(w, p)
			return
		}
		text = req.Rules
	}
	resp, err := a.SetPolicy(r.Context(), c, text)
	var pe *policy.ParseError
	if errors.As(err, &pe) {
		httpjson.Write(w, 400, map[string]any{"error": "invalid_policy", "message": pe.Error(), "line": pe.Line, "rule": pe.Text})
		return
	}
	a.answer(w, r, 200, resp, err)
}

// PolicyCheckRequest is the body of POST /v1/admin/policies/check: may
// this agent do this?
type PolicyCheckRequest struct {
	AgentID string `json:"agent_id"`
	// Action: tools/call (default), resources/read or prompts/get.
	Action string `json:"action"`
	Server string `json:"server"`
	Name   string `json:"name"`
}

// PolicyCheck is the answer, with the deciding rule.
type PolicyCheck struct {
	AgentID  string       `json:"agent_id"`
	Action   string       `json:"action"`
	Resource string       `json:"resource"`
	Allowed  bool         `json:"allowed"`
	Rule     *policy.Rule `json:"rule"`
	Reason   string       `json:"reason"`
}

// CheckPolicy is the dry run of a decision.
func (a *API) CheckPolicy(req PolicyCheckRequest) (*PolicyCheck, error) {
	if req.Action == "" {
		req.Action = "tools/call"
	}
	id, err := a.agentID(req.AgentID)
	if err != nil {
		return nil, err
	}
	if req.Server == "" || req.Name == "" {
		return nil, invalid("server", "server and name are required")
	}
	resource := req.Server + "/" + req.Name
	d, err := a.m.CheckPolicy(id, req.Action, resource)
	if err != nil {
		return nil, &registry.Error{Status: 404, Code: "agent_not_found", Message: err.Error()}
	}
	return &PolicyCheck{AgentID: id, Action: req.Action, Resource: resource, Allowed: d.Allowed, Rule: d.Rule, Reason: d.Reason}, nil
}

// BindingRequest is the body of POST and DELETE /v1/admin/bindings.
type BindingRequest struct {
	AgentID string `json:"agent_id"`
	Server  string `json:"server"`
}

// Binding is the answer: the stored rules after the change.
type Binding struct {
	AgentID string        `json:"agent_id"`
	Server  string        `json:"server"`
	Bound   bool          `json:"bound"`
	Rules   []policy.Rule `json:"rules"`
}

// SetBinding adds (present) or removes the rule that allows an agent
// everything on one server.
func (a *API) SetBinding(ctx context.Context, c Caller, req BindingRequest, present bool) (*Binding, error) {
	id, err := a.agentID(req.AgentID)
	if err != nil {
		return nil, err
	}
	if req.Server == "" || strings.ContainsAny(req.Server, "/ \t*") {
		return nil, invalid("server", "server must be a server name")
	}
	rules, err := a.m.SetBinding(ctx, id, req.Server, present, c.details())
	if err != nil {
		return nil, err
	}
	return &Binding{AgentID: id, Server: req.Server, Bound: present, Rules: rules}, nil
}
