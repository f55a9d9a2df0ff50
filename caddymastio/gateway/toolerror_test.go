package gateway_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// TestToolErrorsAreReadAsClientsReadThem: the audit's outcome of a call
// comes from the result's isError as an MCP client reads it. A result
// that spells isError in another letter case beside it, or whose isError
// is not a boolean, would be read one way by the gateway and another by
// some client: it is withheld, the agent gets a JSON-RPC error, and the
// call is audited as an invalid response.
func TestToolErrorsAreReadAsClientsReadThem(t *testing.T) {
	results := map[string]string{
		"ok":       `{"content":[{"type":"text","text":"sunny"}]}`,
		"failed":   `{"content":[{"type":"text","text":"no such city"}],"isError":true}`,
		"folded":   `{"content":[{"type":"text","text":"no such city"}],"isError":true,"ISERROR":false}`,
		"stringly": `{"content":[{"type":"text","text":"no such city"}],"isError":"false"}`,
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Params struct {
				Arguments struct{ City string } `json:"arguments"`
			} `json:"params"`
		}
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &req)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":`+results[req.Params.Arguments.City]+`}`)
	}))
	t.Cleanup(up.Close)
	e := newEnvTo(t, gateway.RouteSettings{}, "allow * tools/call weather/*\n", up)
	a := mastiotest.NewAgent(t, e.m, "forecaster", "mcp:call")
	invalidBefore := upstreamErrors(t, "invalid_response")

	for _, c := range []struct {
		city, outcome, body string
	}{
		{"ok", "ok", `"text":"sunny"`},
		{"failed", "tool_error", `"isError":true`},
		{"folded", "invalid_response", "the MCP server sent a result the gateway cannot read strictly"},
		{"stringly", "invalid_response", "the MCP server sent a result the gateway cannot read strictly"},
	} {
		resp, body := e.post(a, `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_forecast","arguments":{"city":"`+c.city+`"}}}`)
		if resp.StatusCode != 200 || !strings.Contains(body, c.body) {
			t.Errorf("%s: %d %s", c.city, resp.StatusCode, body)
		}
		if c.outcome == "invalid_response" && (strings.Contains(body, "no such city") || !strings.Contains(body, `"id":7`)) {
			t.Errorf("%s: the unreadable result reached the agent, or its error lost the call's id: %s", c.city, body)
		}
		calls := mastiotest.Events(t, e.m, audit.TypeMCPCall)
		last := calls[len(calls)-1]
		if got := mastiotest.Details(t, last)["outcome"]; got != c.outcome {
			t.Errorf("%s: audited outcome %v, want %s", c.city, got, c.outcome)
		}
		if wantResult := map[bool]string{true: audit.ResultError, false: audit.ResultOK}[c.outcome == "invalid_response"]; last.Result != wantResult {
			t.Errorf("%s: audited result %s, want %s", c.city, last.Result, wantResult)
		}
	}
	if got := upstreamErrors(t, "invalid_response") - invalidBefore; got != 2 {
		t.Errorf("caddy_mastio_mcp_upstream_errors_total counted %v invalid responses, want 2", got)
	}
}

// upstreamErrors is caddy_mastio_mcp_upstream_errors_total for the
// weather server and outcome.
func upstreamErrors(t *testing.T, outcome string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(mastio.Collectors()...)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "caddy_mastio_mcp_upstream_errors_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["server"] == "weather" && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
