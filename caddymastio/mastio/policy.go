package mastio

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// cfgPolicy is the config key of the policy rules managed through the
// admin API (the Caddyfile's rules live in the config, not here).
const cfgPolicy = "policy_rules"

type storedPolicy struct {
	text  string
	rules []policy.Rule
}

// loadPolicy reads the stored rules.
func (s *Shared) loadPolicy(ctx context.Context) error {
	text, _, err := s.store.Config(ctx, cfgPolicy)
	if err != nil {
		return err
	}
	rules, err := policy.Parse("store", text)
	if err != nil {
		return fmt.Errorf("stored policy: %w", err)
	}
	s.policy.Store(&storedPolicy{text: text, rules: rules})
	return nil
}

// setPolicy validates and stores new rules, audited in the same
// transaction; they apply to the next request on every route.
func (s *Shared) setPolicy(ctx context.Context, text, actor string, details map[string]any) ([]policy.Rule, error) {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	return s.setPolicyLocked(ctx, text, actor, details)
}

func (s *Shared) setPolicyLocked(ctx context.Context, text, actor string, details map[string]any) ([]policy.Rule, error) {
	rules, err := policy.Parse("store", text)
	if err != nil {
		return nil, err
	}
	old := s.policy.Load()
	sum := sha256.Sum256([]byte(text))
	d := map[string]any{"rules": len(rules), "previous_rules": len(old.rules), "sha256": hex.EncodeToString(sum[:]),
		"text": text}
	for k, v := range details {
		d[k] = v
	}
	_, err = s.audit.Change(ctx, func(c *audit.Change) error {
		c.Record(audit.Event{Type: "policy.updated", Actor: actor, Subject: "mcp", Details: d})
		return c.SetConfig(ctx, cfgPolicy, text)
	})
	if err != nil {
		return nil, err
	}
	s.policy.Store(&storedPolicy{text: text, rules: rules})
	s.policyWatch.Notify(struct{}{})
	return rules, nil
}

// Decide applies the configuration's rules and the stored ones.
func (m *Mastio) Decide(id registry.Identity, action, resource string) policy.Decision {
	return policy.DecideSets(id, action, resource, m.rules, m.policy.Load().rules)
}

// PolicyRules returns the rules in force: the configuration's, then the
// stored ones.
func (m *Mastio) PolicyRules() []policy.Rule {
	return append(append([]policy.Rule(nil), m.rules...), m.policy.Load().rules...)
}

// ConfigPolicy is the text of the configuration's rules.
func (m *Mastio) ConfigPolicy() string { return m.cfg.Policy }

// StoredPolicy is the text of the stored rules.
func (m *Mastio) StoredPolicy() string { return m.policy.Load().text }

// SetPolicy validates and replaces the stored rules, audited.
func (m *Mastio) SetPolicy(ctx context.Context, text string, details map[string]any) ([]policy.Rule, error) {
	return m.setPolicy(ctx, text, ActorOf(ctx), details)
}

// CheckPolicy is the dry run: may this agent do this?
func (m *Mastio) CheckPolicy(agentID, action, resource string) (policy.Decision, error) {
	id, ok := m.registry.Lookup(agentID)
	if !ok {
		return policy.Decision{}, fmt.Errorf("no active agent %s", agentID)
	}
	return m.Decide(id, action, resource), nil
}

// bindingLine is the rule a binding (agent -> server) stands for.
func bindingLine(agentID, server string) string {
	return "allow agent:" + agentID + " * " + server + "/*  # binding"
}

// SetBinding adds or removes the rule that lets an agent use everything
// on one server.
func (m *Mastio) SetBinding(ctx context.Context, agentID, server string, present bool, details map[string]any) ([]policy.Rule, error) {
	m.policyMu.Lock()
	defer m.policyMu.Unlock()
	text := m.policy.Load().text
	line := bindingLine(agentID, server)
	var kept []string
	found := false
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if strings.TrimSpace(l) == line {
			found = true
			if !present {
				continue
			}
		}
		if l != "" || len(kept) > 0 {
			kept = append(kept, l)
		}
	}
	if present && !found {
		kept = append(kept, line)
	}
	if found == present {
		return m.policy.Load().rules, nil
	}
	return m.setPolicyLocked(ctx, strings.Join(kept, "\n")+"\n", ActorOf(ctx), details)
}

// OnPolicyChange registers fn, called after the stored rules change (a
// surface that holds what an agent may see refreshes it); remove
// unregisters it.
func (s *Shared) OnPolicyChange(fn func()) (remove func()) {
	return s.policyWatch.Add(func(struct{}) { fn() })
}
