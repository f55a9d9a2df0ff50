package caddymastio

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// cfgPolicy is the config key of the policy rules managed through the
// admin API (the Caddyfile's rules live in the config, not here).
const cfgPolicy = "policy_rules"

type storedPolicy struct {
	text  string
	rules []policy.Rule
}

// loadPolicy reads the stored rules.
func (s *state) loadPolicy(ctx context.Context) error {
	text, _, err := s.store.GetConfig(ctx, cfgPolicy)
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
func (s *state) setPolicy(ctx context.Context, text, actor string, details map[string]any) ([]policy.Rule, error) {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	return s.setPolicyLocked(ctx, text, actor, details)
}

func (s *state) setPolicyLocked(ctx context.Context, text, actor string, details map[string]any) ([]policy.Rule, error) {
	rules, err := policy.Parse("store", text)
	if err != nil {
		return nil, err
	}
	old := s.policy.Load()
	sum := sha256.Sum256([]byte(text))
	tx, err := s.store.DB().BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		cfgPolicy, text, store.FormatTime(time.Now())); err != nil {
		return nil, err
	}
	d := map[string]any{"rules": len(rules), "previous_rules": len(old.rules), "sha256": hex.EncodeToString(sum[:]),
		"text": text}
	for k, v := range details {
		d[k] = v
	}
	if _, err := s.audit.AppendTx(ctx, tx, audit.Event{Type: "policy.updated", Actor: actor, Subject: "mcp", Details: d}); err != nil {
		return nil, err
	}
	if err := s.store.CheckFile(); err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	s.policy.Store(&storedPolicy{text: text, rules: rules})
	return rules, nil
}

// decide applies the config's rules and the stored ones.
func (a *App) decide(p policy.Principal, action, resource string) policy.Decision {
	return policy.DecideSets(p, action, resource, a.policyRules, a.state.policy.Load().rules)
}

// principalFor is the policy view of an agent, from the live registry.
func (a *App) principalFor(agentID string) (policy.Principal, bool) {
	id, ok := a.state.registry.Lookup(agentID)
	if !ok {
		return policy.Principal{}, false
	}
	return policy.Principal{AgentID: id.AgentID, Groups: id.Groups, Capabilities: id.Capabilities}, true
}

// PolicyText implements admin.PolicyStore.
func (a *App) PolicyText() (string, string) { return a.PolicyRules, a.state.policy.Load().text }

// Rules implements admin.PolicyStore.
func (a *App) Rules() []policy.Rule {
	return append(append([]policy.Rule(nil), a.policyRules...), a.state.policy.Load().rules...)
}

// SetPolicy implements admin.PolicyStore.
func (a *App) SetPolicy(ctx context.Context, text string, details map[string]any) ([]policy.Rule, error) {
	return a.state.setPolicy(ctx, text, "admin", details)
}

// CheckPolicy implements admin.PolicyStore: the dry run.
func (a *App) CheckPolicy(agentID, action, resource string) (policy.Decision, error) {
	p, ok := a.principalFor(agentID)
	if !ok {
		return policy.Decision{}, fmt.Errorf("no active agent %s", agentID)
	}
	return a.decide(p, action, resource), nil
}

// bindingLine is the rule a binding (agent -> server) stands for.
func bindingLine(agentID, server string) string {
	return "allow agent:" + agentID + " * " + server + "/*  # binding"
}

// SetBinding implements admin.PolicyStore: add or remove the rule that
// lets an agent use everything on one server.
func (a *App) SetBinding(ctx context.Context, agentID, server string, present bool, details map[string]any) ([]policy.Rule, error) {
	a.state.policyMu.Lock()
	defer a.state.policyMu.Unlock()
	text := a.state.policy.Load().text
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
		return a.state.policy.Load().rules, nil
	}
	return a.state.setPolicyLocked(ctx, strings.Join(kept, "\n")+"\n", "admin", details)
}
