package gateway_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// env serves, over TLS: the Mastio's endpoints with the /v1/mcp
// aggregator, and /weather/ through the policy filter to the upstream.
type env struct {
	t   *testing.T
	m   *mastio.Mastio
	srv *httptest.Server
}

func newEnv(t *testing.T, rs gateway.RouteSettings, policy string) *env {
	t.Helper()
	return newEnvTo(t, rs, policy, mcptest.Weather(t, false))
}

// newEnvTo is newEnv with the upstream up.
func newEnvTo(t *testing.T, rs gateway.RouteSettings, policy string, up *httptest.Server) *env {
	t.Helper()
	m := mastiotest.New(t, mastio.Settings{Policy: policy, Servers: map[string]*mastio.Server{"weather": {URL: up.URL}}}, nil)
	pool := gateway.NewPool(m, func(s string) string { return s })
	t.Cleanup(pool.Close)
	agg := gateway.NewAggregator(m, zap.NewNop(), pool)
	t.Cleanup(agg.Close)
	ep := endpoints.New(m, zap.NewNop(), endpoints.Routes{"/v1/mcp": agg})
	rs.Server = "weather"
	route := gateway.NewRoute(m, zap.NewNop(), rs)
	target, _ := url.Parse(up.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := mastiotest.Serve(t, m, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/weather/") {
			if err := route.Serve(w, r, func(w http.ResponseWriter, r *http.Request) error { proxy.ServeHTTP(w, r); return nil }); err != nil {
				http.Error(w, err.Error(), 500)
			}
			return
		}
		ep.ServeHTTP(w, r)
	}))
	return &env{t: t, m: m, srv: srv}
}

// connect opens an MCP session (the official Go SDK client) for agent a at
// path, its requests carrying a's DPoP-bound token.
func (e *env) connect(a *mastiotest.Agent, path string) *mcpsdk.ClientSession {
	e.t.Helper()
	s := a.Session(e.t, e.srv)
	c := mcpsdk.NewClient(&mcpsdk.Implementation{Name: "test-agent", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), &mcpsdk.StreamableClientTransport{Endpoint: e.srv.URL + path,
		HTTPClient: s.HTTPClient(), DisableStandaloneSSE: true, MaxRetries: -1}, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return cs
}

func toolNames(t *testing.T, cs *mcpsdk.ClientSession) []string {
	t.Helper()
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	return names
}

func TestRouteFiltersListsAndDecidesCalls(t *testing.T) {
	e := newEnv(t, gateway.RouteSettings{}, "allow * tools/call weather/get_forecast\n")
	a := mastiotest.NewAgent(t, e.m, "forecaster", "mcp:call")
	cs := e.connect(a, "/weather/mcp")
	if names := toolNames(t, cs); strings.Join(names, ",") != "get_forecast" {
		t.Fatalf("tools/list shows %v", names)
	}
	res, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "get_forecast", Arguments: map[string]any{"city": "Oslo"}})
	if err != nil || mcptest.TextOf(res) != "sunny in Oslo" {
		t.Fatalf("allowed call: %v %v", mcptest.TextOf(res), err)
	}
	_, err = cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "delete_everything", Arguments: map[string]any{}})
	if err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("denied call: %v", err)
	}
	calls := mastiotest.Events(t, e.m, "mcp.call")
	if len(calls) != 2 {
		t.Fatalf("%d mcp.call rows, want 2", len(calls))
	}
	for i, want := range []string{"ok", "denied"} {
		if d := mastiotest.Details(t, calls[i]); d["outcome"] != want || calls[i].Actor != "agent:"+a.ID || d["args_sha256"] == "" {
			t.Errorf("row %d: %v", i, d)
		}
	}
}

// post sends one raw JSON-RPC body to the route as agent a, with the
// headers hdr (name, value, ...).
func (e *env) post(a *mastiotest.Agent, body string, hdr ...string) (*http.Response, string) {
	e.t.Helper()
	return e.postTo(a, "/weather/mcp", body, hdr...)
}

func (e *env) postTo(a *mastiotest.Agent, path, body string, hdr ...string) (*http.Response, string) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := a.Session(e.t, e.srv).HTTPClient().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

func TestRouteRefusesWhatItCannotReadExactly(t *testing.T) {
	e := newEnv(t, gateway.RouteSettings{}, "allow * tools/call weather/*\n")
	a := mastiotest.NewAgent(t, e.m, "prober", "mcp:call")
	for _, c := range []struct {
		name, body string
		hdr        []string
		status     int
	}{
		{"a member twice", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","name":"delete_everything"}}`, nil, 400},
		{"a case variant", `{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{}}`, nil, 400},
		{"two session ids", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, []string{"Mcp-Session-Id", "a", "Mcp-Session-Id", "b"}, 400},
		{"Mcp-Name against the body", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast"}}`,
			[]string{"Mcp-Method", "tools/call", "Mcp-Name", "delete_everything"}, 400},
		{"an unknown session", `{"jsonrpc":"2.0","id":1,"method":"ping"}`, []string{"Mcp-Session-Id", "never-opened"}, 404},
	} {
		resp, body := e.post(a, c.body, c.hdr...)
		if resp.StatusCode != c.status || !strings.Contains(body, `"error"`) {
			t.Errorf("%s: %d %s", c.name, resp.StatusCode, body)
		}
	}
	if refused := mastiotest.Events(t, e.m, "mcp.refused"); len(refused) != 4 {
		t.Fatalf("%d mcp.refused rows, want 4 (the unknown session names no decision against the agent)", len(refused))
	}
	if calls := mastiotest.Events(t, e.m, "mcp.call"); len(calls) != 0 {
		t.Fatalf("a refused message reached the upstream: %d calls", len(calls))
	}
}

func TestRouteSessionsBelongToTheirAgent(t *testing.T) {
	e := newEnv(t, gateway.RouteSettings{}, "allow * tools/call weather/*\n")
	owner := mastiotest.NewAgent(t, e.m, "owner", "mcp:call")
	cs := e.connect(owner, "/weather/mcp")
	other := mastiotest.NewAgent(t, e.m, "other", "mcp:call")
	resp, body := e.post(other, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, "Mcp-Session-Id", cs.ID())
	if resp.StatusCode != 403 || !strings.Contains(body, "belongs to another agent") {
		t.Fatalf("another agent's session: %d %s", resp.StatusCode, body)
	}
}

func TestRouteRateLimitsPerItem(t *testing.T) {
	e := newEnv(t, gateway.RouteSettings{ItemRate: 1}, "allow * tools/call weather/*\n")
	a := mastiotest.NewAgent(t, e.m, "hasty", "mcp:call")
	cs := e.connect(a, "/weather/mcp")
	call := func() error {
		_, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "get_forecast", Arguments: map[string]any{"city": "x"}})
		return err
	}
	if err := call(); err != nil {
		t.Fatal(err)
	}
	// 429 with Retry-After: the SDK reports the status, not the body.
	if err := call(); err == nil || !strings.Contains(err.Error(), "Too Many Requests") {
		t.Fatalf("a second call within the minute: %v", err)
	}
	if d := mastiotest.Details(t, mastiotest.Events(t, e.m, "mcp.call")[1]); d["outcome"] != "rate_limited" {
		t.Fatalf("the limited call: %v", d)
	}
}

func TestAggregatorServesEveryServerUnderPolicy(t *testing.T) {
	e := newEnv(t, gateway.RouteSettings{}, "allow * tools/call weather/get_forecast\n")
	a := mastiotest.NewAgent(t, e.m, "aggregated", "mcp:call")
	cs := e.connect(a, "/v1/mcp")
	if names := toolNames(t, cs); strings.Join(names, ",") != "weather.get_forecast" {
		t.Fatalf("aggregated tools: %v", names)
	}
	res, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "weather.get_forecast", Arguments: map[string]any{"city": "Rome"}})
	if err != nil || mcptest.TextOf(res) != "sunny in Rome" {
		t.Fatalf("allowed call: %q %v", mcptest.TextOf(res), err)
	}
	for name, want := range map[string]string{"weather.delete_everything": "not allowed", "nowhere.tool": "unknown tool"} {
		if _, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: name, Arguments: map[string]any{}}); err == nil ||
			!strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	calls := mastiotest.Events(t, e.m, "mcp.call")
	if len(calls) != 2 || mastiotest.Details(t, calls[0])["outcome"] != "ok" || mastiotest.Details(t, calls[1])["outcome"] != "denied" {
		t.Fatalf("aggregated calls audited: %d rows", len(calls))
	}
	// This client speaks 2026-07-28, sessionless: a GET stream needs a session.
	s := a.Session(t, e.srv)
	resp, err := s.HTTPClient().Get(e.srv.URL + "/v1/mcp")
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("GET /v1/mcp: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestAnonymousCallersAreRefused(t *testing.T) {
	e := newEnv(t, gateway.RouteSettings{}, "allow * tools/call weather/*\n")
	for _, path := range []string{"/weather/mcp", "/v1/mcp"} {
		resp, err := mastiotest.Client(e.m).Post(e.srv.URL+path, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "DPoP ") {
			t.Errorf("%s without a token: %d %v", path, resp.StatusCode, resp.Header)
		}
	}
}
