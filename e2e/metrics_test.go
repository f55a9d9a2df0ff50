package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// decisionLog adds a Caddy log that writes the mastio.decision logger at
// DEBUG (allows too), as the README says to.
func decisionLog(caddyfile string) string {
	return strings.Replace(caddyfile, "\tlog {\n\t\tformat json\n\t}\n",
		"\tlog {\n\t\tformat json\n\t}\n\tlog decisions {\n\t\tinclude mastio.decision\n\t\tlevel DEBUG\n\t\tformat json\n\t}\n", 1)
}

// decisionLines are the decision log lines with msg, decoded.
func decisionLines(t *testing.T, out, msg string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(out, "\n") {
		if !strings.Contains(l, `"logger":"mastio.decision"`) || !strings.Contains(l, `"msg":"`+msg+`"`) {
			continue
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("a decision line is not JSON: %s", l)
		}
		lines = append(lines, v)
	}
	return lines
}

// TestMetricsAndDecisionLogsCountWhatHappened drives known traffic through
// a fresh gateway — calls allowed and denied by policy, one rate limited,
// one to a server that is down, requests without credentials, a session
// used by another agent, a revocation — then scrapes Caddy's metrics
// endpoint and reads the decision log: every count and every line is
// there, with the stable fields.
func TestMetricsAndDecisionLogsCountWhatHappened(t *testing.T) {
	s := mcpServerWith(t, decisionLog)
	alice := makeIdentity(t, s, "alice", "mcp:call")
	mallory := makeIdentity(t, s, "mallory", "mcp:call")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(cs *mcp.ClientSession, tool string) error {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: map[string]any{"city": "Turin"}})
		return err
	}
	cs := connectMCP(t, s, alice, "/mcp/json")
	for range 3 {
		if err := call(cs, "get_forecast"); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := call(cs, "delete_everything"); err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Fatalf("a denied call: %v", err)
		}
	}
	limited := connectMCP(t, s, alice, "/mcp/limited")
	for i := range 4 {
		if err := call(limited, "get_forecast"); (err != nil) != (i == 3) {
			t.Fatalf("call %d on /mcp/limited (item_rate 3): %v", i+1, err)
		}
	}
	forecast := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_forecast","arguments":{"city":"Turin"}}}`
	if code, _, body := rawMCP(t, s, alice.Session(), "/mcp/down", nil, forecast); code != 200 || !strings.Contains(body, "unavailable") {
		t.Fatalf("a call to a server that is down: %d %s", code, body)
	}
	for range 4 {
		resp, err := s.client().Post(s.url("/mcp/json"), "application/json", strings.NewReader(forecast))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("no credentials: %d", resp.StatusCode)
		}
	}
	list := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	if code, _, body := rawMCP(t, s, mallory.Session(), "/mcp/json", map[string]string{"Mcp-Session-Id": cs.ID()}, list); code != 403 {
		t.Fatalf("another agent's session: %d %s", code, body)
	}
	if code, b := s.adminCall(t, "POST", "/v1/admin/agents/orga::mallory/revoke", adminSecret, nil); code != 200 {
		t.Fatalf("revoke: %d %v", code, b["_raw"])
	}

	// What the audit log holds is what the metrics counted.
	counts := map[string]float64{}
	for _, r := range s.exportAudit(t) {
		counts[r.Type]++
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"caddy_mastio_mcp_calls_total", []string{`server="weather"`, `decision="allow"`}, 3 + 3 + 1},
		{"caddy_mastio_mcp_calls_total", []string{`server="weather"`, `decision="deny"`}, 2},
		{"caddy_mastio_mcp_rate_limited_total", []string{`server="weather"`, `scope="item"`}, 1},
		{"caddy_mastio_mcp_upstream_errors_total", []string{`server="weather"`, `outcome="upstream_error"`}, 1},
		{"caddy_mastio_mcp_upstream_duration_seconds_count", []string{`server="weather"`}, 3 + 3 + 1},
		{"caddy_mastio_mcp_sessions_total", []string{`server="weather"`, `result="created"`}, 2},
		{"caddy_mastio_mcp_sessions_total", []string{`server="weather"`, `result="denied"`}, 1},
		{"caddy_mastio_auth_total", []string{`result="deny"`, `reason="missing_token"`}, 4},
		{"caddy_mastio_audit_events_total", []string{`type="agent.created"`}, 2},
		{"caddy_mastio_audit_events_total", []string{`type="agent.revoked"`}, 1},
		{"caddy_mastio_audit_events_total", []string{`type="token.issued"`}, counts["token.issued"]},
		{"caddy_mastio_audit_events_total", []string{`type="mcp.call"`, `result="ok"`}, 6},
		{"caddy_mastio_audit_events_total", []string{`type="mcp.call"`, `result="denied"`}, 3},
		{"caddy_mastio_audit_events_total", []string{`type="mcp.call"`, `result="error"`}, 1},
		{"caddy_mastio_ready", []string{`check="database"`}, 1},
		{"caddy_mastio_ready", []string{`check="audit_chain"`}, 1},
	} {
		if got := s.metric(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := counts["token.issued"]; n < 2 {
		t.Errorf("%v token.issued rows, want one per agent at least", n)
	}
	if got := s.metric(t, "caddy_mastio_audit_commit_duration_seconds_count"); got < float64(len(counts)) {
		t.Errorf("audit commits counted: %v", got)
	}
	if got := s.metric(t, "caddy_mastio_auth_total", `result="success"`, `reason="dpop"`); got < 7 {
		t.Errorf("successful authentications: %v", got)
	}
	now := float64(time.Now().Unix())
	if exp := s.metric(t, "caddy_mastio_certificate_expiry_timestamp_seconds", `certificate="intermediate"`); exp < now+300*86400 {
		t.Errorf("intermediate expiry: %v", exp)
	}
	if exp := s.metric(t, "caddy_mastio_certificate_expiry_timestamp_seconds", `certificate="org_root"`); exp < now+10*365*86400 {
		t.Errorf("root expiry: %v", exp)
	}
	if age := s.metric(t, "caddy_mastio_signing_key_age_seconds"); age <= 0 || age > 600 {
		t.Errorf("signing key age: %v", age)
	}

	// One line per decision, with the stable fields.
	out := s.out.String()
	stable := []string{"decision", "kind", "reason", "agent_id", "jkt", "rule", "request_id", "remote_ip"}
	for _, c := range []struct {
		msg, decision, kind, agent string
		n                          int
		fields                     []string // non-empty
	}{
		{"MCP call denied", "deny", "policy", "orga::alice", 2, []string{"jkt", "rule", "request_id", "remote_ip", "rpc_id"}},
		{"MCP call denied", "deny", "rate_limit", "orga::alice", 1, []string{"jkt", "request_id"}},
		{"MCP call allowed", "allow", "policy", "orga::alice", 7, []string{"jkt", "rule", "request_id"}},
		{"MCP session refused", "deny", "session", "orga::mallory", 1, []string{"jkt", "request_id"}},
		{"MCP session opened", "allow", "session", "orga::alice", 2, []string{"request_id"}},
		{"request refused", "deny", "auth", "", 4, []string{"request_id", "remote_ip"}},
		{"token issued", "allow", "token", "orga::alice", 1, []string{"jkt", "request_id"}},
	} {
		var got []map[string]any
		for _, l := range decisionLines(t, out, c.msg) {
			if l["decision"] == c.decision && l["kind"] == c.kind && (c.agent == "" || l["agent_id"] == c.agent) {
				got = append(got, l)
			}
		}
		if len(got) < c.n {
			t.Errorf("%s (%s %s %s): %d lines, want %d", c.msg, c.decision, c.kind, c.agent, len(got), c.n)
			continue
		}
		for _, l := range got {
			for _, f := range stable {
				if _, ok := l[f]; !ok {
					t.Errorf("%s: no %q field: %v", c.msg, f, l)
				}
			}
			for _, f := range c.fields {
				if v, _ := l[f].(string); v == "" {
					t.Errorf("%s: %q is empty: %v", c.msg, f, l)
				}
			}
		}
	}
}
