package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

const rules = `
# The research group may call every tool of github except deletions.
allow group:research        *            github/*
deny  *                     tools/call   */delete_*   # never, for anyone
allow capability:mcp:call   tools/call   weather/get_forecast
allow agent:orga::ops-*     resources/read  docs/file:///runbooks/*
deny  agent:orga::intern    *            *
`

func TestDecide(t *testing.T) {
	rs, err := Parse("config", rules)
	if err != nil {
		t.Fatal(err)
	}
	researcher := registry.Identity{AgentID: "orga::r1", Groups: []string{"research"}, Capabilities: []string{"mcp:call"}}
	intern := registry.Identity{AgentID: "orga::intern", Groups: []string{"research"}, Capabilities: []string{"mcp:call"}}
	ops := registry.Identity{AgentID: "orga::ops-bot"}
	nobody := registry.Identity{AgentID: "orga::x"}
	cases := []struct {
		p                registry.Identity
		action, resource string
		allowed          bool
		rule             string
	}{
		{researcher, "tools/call", "github/search_code", true, "config:3"},
		{researcher, "prompts/get", "github/review", true, "config:3"},
		{researcher, "tools/call", "github/delete_repo", false, "config:4"},
		{researcher, "tools/call", "weather/get_forecast", true, "config:5"},
		{researcher, "tools/call", "weather/set_alert", false, ""},
		{intern, "tools/call", "github/search_code", false, "config:7"},
		{intern, "tools/call", "weather/get_forecast", false, "config:7"},
		{ops, "resources/read", "docs/file:///runbooks/db.md", true, "config:6"},
		{ops, "resources/read", "docs/file:///secrets/key", false, ""},
		{ops, "tools/call", "docs/file:///runbooks/db.md", false, ""},
		{nobody, "tools/call", "github/search_code", false, ""},
	}
	for _, c := range cases {
		d := Decide(rs, c.p, c.action, c.resource)
		got := ""
		if d.Rule != nil {
			got = d.Rule.ID
		}
		if d.Allowed != c.allowed || got != c.rule {
			t.Errorf("%s %s %s: allowed=%v by %q (%s), want %v by %q", c.p.AgentID, c.action, c.resource, d.Allowed, got, d.Reason, c.allowed, c.rule)
		}
	}
	if d := Decide(nil, researcher, "tools/call", "x/y"); d.Allowed || !strings.Contains(d.Reason, "default deny") {
		t.Fatalf("empty policy: %+v", d)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	cases := map[string]string{
		"allow * tools/call\n":          "want 4 fields",
		"\n\npermit * tools/call a/b\n": "line 3: effect",
		"allow user:bob tools/call a/b": "unknown kind",
		"allow agent: tools/call a/b":   "principal",
		"allow * tools/delete a/b":      "matches none",
		"allow * tools/call justaname":  "<server>/<name>",
		"allow * tools/call a/b extra":  "want 4 fields",
	}
	for text, want := range cases {
		_, err := Parse("store", text)
		var pe *ParseError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", text, err, want)
		}
	}
}

func TestGlob(t *testing.T) {
	for _, c := range []struct {
		p, s string
		ok   bool
	}{
		{"*", "", true}, {"a*", "abc", true}, {"*c", "abc", true}, {"a*c", "abc", true}, {"a*c", "ac", true},
		{"a*c", "abd", false}, {"*/delete_*", "github/delete_repo", true}, {"*/delete_*", "github/undelete", false},
		{"a**b", "axxb", true}, {"exact", "exact", true}, {"exact", "exactly", false},
	} {
		if match(c.p, c.s) != c.ok {
			t.Errorf("match(%q, %q) != %v", c.p, c.s, c.ok)
		}
	}
}

func BenchmarkDecide(b *testing.B) {
	var sb strings.Builder
	for i := 0; i < 200; i++ {
		sb.WriteString("allow group:g" + string(rune('a'+i%26)) + " tools/call server" + string(rune('a'+i%26)) + "/*\n")
	}
	sb.WriteString("deny * tools/call */delete_*\nallow capability:mcp:call tools/call weather/*\n")
	rs, _ := Parse("bench", sb.String())
	p := registry.Identity{AgentID: "orga::bot", Groups: []string{"gz"}, Capabilities: []string{"mcp:call"}}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if !Decide(rs, p, "tools/call", "weather/get_forecast").Allowed {
			b.Fatal("denied")
		}
	}
}

func TestGlobMatching(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true}, {"*", "a/b", true}, {"a*", "a", true}, {"a*", "ba", false}, {"*a", "ba", true}, {"*a", "ab", false},
		{"a*b*c", "abc", true}, {"a*b*c", "axxbyyc", true}, {"a*b*c", "acb", false}, {"a*bc*bc", "abcbc", true},
		{"a*bc*bc", "abc", false}, {"*ab*ab", "abab", true}, {"*ab*ab", "aab", false}, {"github/search_*", "github/search_code", true},
		{"*/delete_*", "fs/delete_all", true}, {"*/delete_*", "fs/remove", false}, {"x**y", "xy", true}, {"ab", "ab", true}, {"ab", "abc", false},
	} {
		if got := match(c.pattern, c.s); got != c.want {
			t.Errorf("match(%q, %q) = %v", c.pattern, c.s, got)
		}
	}
}

// TestGlobIsLinear: a pattern that makes a backtracking matcher take
// exponential time (the run would hang until go test's timeout) is
// decided at once; BenchmarkGlobPathological measures it.
func TestGlobIsLinear(t *testing.T) {
	pattern := strings.Repeat("*a", 40) + "*b"
	if match(pattern, strings.Repeat("a", 10_000)) {
		t.Fatal("matched without a b")
	}
	if !match(pattern, strings.Repeat("a", 10_000)+"b") {
		t.Fatal("no match with the b")
	}
}

func BenchmarkGlobPathological(b *testing.B) {
	pattern := strings.Repeat("*a", 40) + "*b"
	s := strings.Repeat("a", 10_000)
	for i := 0; i < b.N; i++ {
		match(pattern, s)
	}
}
