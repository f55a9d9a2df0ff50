// Package policy decides whether an agent may use an MCP tool, resource
// or prompt. Rules are lines of text:
//
//	<effect> <principal> <action> <resource>   [# comment]
//
//	allow capability:mcp:call  tools/call      weather/*
//	allow group:research       *               github/search_*
//	deny  agent:orga::intern   tools/call      */delete_*
//	allow agent:orga::ops      resources/read  docs/file:///runbooks/*
//
// effect is allow or deny. principal is *, agent:<agent id or glob>,
// group:<name> or capability:<name>. action is an MCP method that uses a
// named item — tools/call, resources/read, prompts/get — or a glob of
// them. resource is <server>/<name> (a tool or prompt name, or a resource
// URI), globs allowed; "*" in a glob matches any run of characters.
//
// Decisions: a matching deny always wins; otherwise a matching allow
// allows; otherwise the request is denied. Every decision names the rule
// (source and line) or says that no rule allowed it.
package policy

import (
	"fmt"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// Actions that name an item and are subject to policy.
var Actions = []string{"tools/call", "resources/read", "prompts/get"}

// Rule is one parsed line.
type Rule struct {
	// ID is <source>:<line>, e.g. "config:3" or "store:12".
	ID        string `json:"id"`
	Effect    string `json:"effect"`
	Principal string `json:"principal"`
	Action    string `json:"action"`
	Resource  string `json:"resource"`
	Comment   string `json:"comment,omitempty"`
}

func (r Rule) String() string {
	s := r.Effect + " " + r.Principal + " " + r.Action + " " + r.Resource
	if r.Comment != "" {
		s += "  # " + r.Comment
	}
	return s
}

// ParseError is a rule that cannot be used, with its line.
type ParseError struct {
	Source string
	Line   int
	Text   string
	Msg    string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("%s line %d: %s: %q", e.Source, e.Line, e.Msg, e.Text)
}

// Parse reads rules from text. Blank lines and lines starting with # are
// ignored. The first bad line is reported.
func Parse(source, text string) ([]Rule, error) {
	var rules []Rule
	for i, line := range strings.Split(text, "\n") {
		body, comment, _ := strings.Cut(line, "#")
		f := strings.Fields(body)
		if len(f) == 0 {
			continue
		}
		bad := func(format string, args ...any) error {
			return &ParseError{Source: source, Line: i + 1, Text: strings.TrimSpace(line), Msg: fmt.Sprintf(format, args...)}
		}
		if len(f) != 4 {
			return nil, bad("want 4 fields (effect principal action resource), got %d", len(f))
		}
		r := Rule{ID: fmt.Sprintf("%s:%d", source, i+1), Effect: f[0], Principal: f[1], Action: f[2], Resource: f[3],
			Comment: strings.TrimSpace(comment)}
		if r.Effect != "allow" && r.Effect != "deny" {
			return nil, bad("effect %q: want allow or deny", r.Effect)
		}
		if err := checkPrincipal(r.Principal); err != nil {
			return nil, bad("%v", err)
		}
		if err := checkAction(r.Action); err != nil {
			return nil, bad("%v", err)
		}
		if r.Resource != "*" && !strings.Contains(r.Resource, "/") {
			return nil, bad("resource %q: want <server>/<name> (globs allowed) or *", r.Resource)
		}
		rules = append(rules, r)
	}
	return rules, nil
}

func checkPrincipal(p string) error {
	if p == "*" {
		return nil
	}
	kind, val, ok := strings.Cut(p, ":")
	if !ok || val == "" {
		return fmt.Errorf("principal %q: want *, agent:<id>, group:<name> or capability:<name>", p)
	}
	switch kind {
	case "agent", "group", "capability":
		return nil
	}
	return fmt.Errorf("principal %q: unknown kind %q (want agent, group or capability)", p, kind)
}

func checkAction(a string) error {
	for _, known := range Actions {
		if match(a, known) {
			return nil
		}
	}
	return fmt.Errorf("action %q matches none of %s", a, strings.Join(Actions, ", "))
}

// match reports whether s matches pattern, where * matches any run of
// characters (including none and including '/'). It runs in time linear
// in the lengths (no backtracking): with * the only wildcard, taking the
// leftmost occurrence of each literal piece between stars is always right.
func match(pattern, s string) bool {
	star := strings.IndexByte(pattern, '*')
	if star < 0 {
		return pattern == s
	}
	if !strings.HasPrefix(s, pattern[:star]) {
		return false
	}
	s, pattern = s[star:], pattern[star+1:]
	for {
		star = strings.IndexByte(pattern, '*')
		if star < 0 { // the last piece ends the string
			return len(s) >= len(pattern) && strings.HasSuffix(s, pattern)
		}
		piece := pattern[:star]
		i := strings.Index(s, piece)
		if i < 0 {
			return false
		}
		s, pattern = s[i+len(piece):], pattern[star+1:]
	}
}

// matches reports whether the agent id is what a rule's principal spec
// names: * (anyone), agent:<id glob>, group:<group> or
// capability:<capability>.
func matches(id registry.Identity, spec string) bool {
	if spec == "*" {
		return true
	}
	kind, val, _ := strings.Cut(spec, ":")
	switch kind {
	case "agent":
		return match(val, id.AgentID)
	case "group":
		return has(id.Groups, val)
	case "capability":
		return has(id.Capabilities, val)
	}
	return false
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Decision is the outcome of Decide.
type Decision struct {
	Allowed bool   `json:"allowed"`
	Rule    *Rule  `json:"rule,omitempty"`
	Reason  string `json:"reason"`
}

// Decide applies rules: a matching deny wins, then a matching allow,
// else deny.
func Decide(rules []Rule, id registry.Identity, action, resource string) Decision {
	return DecideSets(id, action, resource, rules)
}

// DecideSets is Decide over several rule sets taken together (the
// config's and the stored ones).
func DecideSets(id registry.Identity, action, resource string, sets ...[]Rule) Decision {
	var allow *Rule
	for _, rules := range sets {
		for i := range rules {
			r := &rules[i]
			if !match(r.Action, action) || !match(r.Resource, resource) || !matches(id, r.Principal) {
				continue
			}
			if r.Effect == "deny" {
				return Decision{Allowed: false, Rule: r, Reason: "denied by rule " + r.ID}
			}
			if allow == nil {
				allow = r
			}
		}
	}
	if allow != nil {
		return Decision{Allowed: true, Rule: allow, Reason: "allowed by rule " + allow.ID}
	}
	return Decision{Allowed: false, Reason: "no rule allows it (default deny)"}
}
