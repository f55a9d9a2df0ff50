package client_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway/gatewaytest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// mastioWithWeather is a Mastio whose policy allows get_forecast only, in
// front of a real MCP server, and the number of requests it received.
func mastioWithWeather(t *testing.T) (*mastio.Mastio, *httptest.Server, *atomic.Int64) {
	up := mcptest.Weather(t, false)
	m := mastiotest.New(t, mastio.Settings{Policy: "allow * tools/call weather/get_forecast\n",
		Servers: map[string]*mastio.Server{"weather": {URL: up.URL}}}, nil)
	hits := new(atomic.Int64)
	return m, gatewaytest.ServeGateway(t, m, gateway.RouteSettings{}, hits), hits
}

// bridgeFor is a bridge of a new agent to path at srv.
func bridgeFor(t *testing.T, m *mastio.Mastio, srv *httptest.Server, path string) (*client.Bridge, *mastiotest.Agent) {
	a := mastiotest.NewAgent(t, m, "desktop-"+strings.NewReplacer("/", "-", ".", "-").Replace(strings.Trim(path, "/")), "mcp:call")
	return &client.Bridge{Session: a.Session(t, srv), Target: srv.URL + path, Logf: t.Logf}, a
}

// serveHTTP serves the bridge on a loopback port; it returns the URL a
// client is given.
func serveHTTP(t *testing.T, b *client.Bridge) string {
	path := client.NewPath()
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	h = b.Handler(srv.Listener.Addr().String(), path)
	return srv.URL + path
}

// stockClient connects the official Go SDK client, with no credentials of
// its own, through transport.
func stockClient(t *testing.T, transport mcpsdk.Transport) *mcpsdk.ClientSession {
	t.Helper()
	c := mcpsdk.NewClient(&mcpsdk.Implementation{Name: "stock-client", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), transport, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// stdioClient runs b.ServeStdio and connects a stock client to it over a
// pair of pipes, as a desktop client launching the command would.
func stdioClient(t *testing.T, b *client.Bridge) *mcpsdk.ClientSession {
	toBridge, clientOut := io.Pipe()
	clientIn, fromBridge := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- b.ServeStdio(context.Background(), toBridge, fromBridge); fromBridge.Close() }()
	cs := stockClient(t, &mcpsdk.IOTransport{Reader: clientIn, Writer: clientOut})
	t.Cleanup(func() {
		cs.Close()
		clientOut.Close()
		if err := <-done; err != nil {
			t.Errorf("ServeStdio: %v", err)
		}
	})
	return cs
}

func checkCalls(t *testing.T, cs *mcpsdk.ClientSession, allowed, denied string) {
	t.Helper()
	tools, err := cs.ListTools(context.Background(), nil)
	if err != nil || len(tools.Tools) != 1 || tools.Tools[0].Name != allowed {
		t.Fatalf("tools: %+v %v", tools, err)
	}
	res, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: allowed, Arguments: map[string]any{"city": "Turin"}})
	if err != nil || mcptest.TextOf(res) != "sunny in Turin" {
		t.Fatalf("allowed call: %q %v", mcptest.TextOf(res), err)
	}
	_, err = cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: denied, Arguments: map[string]any{}})
	if err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("denied call: %v", err)
	}
}

func TestBridgeOverHTTP(t *testing.T) {
	m, srv, _ := mastioWithWeather(t)
	for _, path := range []string{"/v1/mcp", "/mcp/weather/mcp"} {
		b, _ := bridgeFor(t, m, srv, path)
		cs := stockClient(t, &mcpsdk.StreamableClientTransport{Endpoint: serveHTTP(t, b), MaxRetries: -1})
		if path == "/v1/mcp" {
			checkCalls(t, cs, "weather.get_forecast", "weather.delete_everything")
		} else {
			checkCalls(t, cs, "get_forecast", "delete_everything")
		}
	}
}

func TestBridgeOverStdio(t *testing.T) {
	m, srv, _ := mastioWithWeather(t)
	b, _ := bridgeFor(t, m, srv, "/mcp/weather/mcp")
	checkCalls(t, stdioClient(t, b), "get_forecast", "delete_everything")
}

// The bridge answers only on its loopback address, from its own origin,
// at its random path.
func TestBridgeRefusesOtherHostsOriginsAndPaths(t *testing.T) {
	m, srv, hits := mastioWithWeather(t)
	b, _ := bridgeFor(t, m, srv, "/v1/mcp")
	endpoint := serveHTTP(t, b)
	before := hits.Load()
	for _, c := range []struct {
		name, url string
		hdr       map[string]string
		status    int
	}{
		{"another host name (DNS rebinding)", endpoint, map[string]string{"Host": "attacker.example:80"}, 403},
		{"a web page's origin", endpoint, map[string]string{"Origin": "http://attacker.example"}, 403},
		{"another path", endpoint[:strings.LastIndex(endpoint, "/")] + "/mcp", nil, 404},
	} {
		req, _ := http.NewRequest("POST", c.url, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		for k, v := range c.hdr {
			if k == "Host" {
				req.Host = v
			} else {
				req.Header.Set(k, v)
			}
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.status)
		}
	}
	if hits.Load() != before {
		t.Fatal("a refused request reached the Mastio")
	}
}

// Revoked while connected: the client gets the reason as a JSON-RPC
// error, and the bridge sends nothing more.
func TestBridgeStopsWhenTheAgentIsRevoked(t *testing.T) {
	m, srv, hits := mastioWithWeather(t)
	b, a := bridgeFor(t, m, srv, "/v1/mcp")
	cs := stdioClient(t, b)
	if _, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "weather.get_forecast", Arguments: map[string]any{"city": "x"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Registry().Revoke(context.Background(), a.ID, "laptop lost", "admin", nil); err != nil {
		t.Fatal(err)
	}
	_, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "weather.get_forecast", Arguments: map[string]any{"city": "x"}})
	if err == nil || !strings.Contains(err.Error(), "agent_revoked") {
		t.Fatalf("a call after the revocation: %v", err)
	}
	after := hits.Load()
	for i := 0; i < 3; i++ {
		if _, err := cs.ListTools(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("a later request: %v", err)
		}
	}
	if hits.Load() != after {
		t.Fatalf("the bridge kept sending after the refusal: %d more requests", hits.Load()-after)
	}
}
