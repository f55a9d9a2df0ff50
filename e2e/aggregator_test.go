package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// guardedUpstream is a real MCP server that only answers requests carrying
// its own credential, and records whether an agent's token ever reached it.
func guardedUpstream(t testing.TB, token string, jsonResponses bool, leaked *[]string) *httptest.Server {
	inner := mcpUpstream(t, jsonResponses)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("DPoP") != "" || strings.HasPrefix(r.Header.Get("Authorization"), "DPoP ") {
			*leaked = append(*leaked, r.Header.Get("Authorization"))
		}
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, inner.URL+r.URL.Path, r.Body)
		req.Header = r.Header.Clone()
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				w.(http.Flusher).Flush()
			}
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestAggregator(t *testing.T) {
	var leaked []string
	weather := guardedUpstream(t, "weather-upstream-secret", true, &leaked)
	search := guardedUpstream(t, "search-upstream-secret", false, &leaked)
	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call weather/get_forecast
			allow group:research tools/call search/*
			deny * tools/call */delete_*
		}
		mcp_server weather {
			url {$WEATHER_URL}/mcp
			header Authorization "Bearer {env.WEATHER_TOKEN}"
			timeout 5s
			item_rate 3
		}`, "", "WEATHER_URL="+weather.URL, "WEATHER_TOKEN=weather-upstream-secret")

	// A second server registered at runtime with a literal token: kept in
	// the key store, never in the database or the API's answers.
	code, body := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, map[string]any{
		"name": "search", "url": search.URL + "/mcp", "bearer_token": "search-upstream-secret", "timeout_seconds": 5})
	if code != 201 || strings.Contains(body["_raw"].(string), "search-upstream-secret") {
		t.Fatalf("register server: %d %v", code, body["_raw"])
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	downURL := fmt.Sprintf("http://%s/mcp", l.Addr())
	l.Close()
	if code, body := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, map[string]any{"name": "down", "url": downURL}); code != 201 {
		t.Fatalf("register down server: %d %v", code, body["_raw"])
	}
	if code, body := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, map[string]any{"name": "bad/name", "url": "ftp://x"}); code != 400 {
		t.Fatalf("invalid server accepted: %d %v", code, body["_raw"])
	}

	// An agent in the research group.
	code, created := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "analyst",
		"capabilities": []string{"mcp:call"}, "groups": []string{"research"}})
	if code != 201 {
		t.Fatal(created["_raw"])
	}
	analyst := identityFrom(t, s, created)

	// A standard MCP client (the official Go SDK) over the DPoP session.
	c := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: s.url("/v1/mcp"), HTTPClient: analyst.Session().HTTPClient(),
		MaxRetries: -1, DisableStandaloneSSE: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if got := toolNames(t, cs); strings.Join(got, ",") != "search.get_forecast,search.set_alert,search.slow,weather.get_forecast" {
		t.Fatalf("aggregated tools: %v", got)
	}
	if text, err := callText(cs, "weather.get_forecast", map[string]any{"city": "Rome"}); err != nil || text != "sunny in Rome" {
		t.Fatalf("weather.get_forecast: %q %v", text, err)
	}
	if text, err := callText(cs, "search.set_alert", map[string]any{"city": "Oslo"}); err != nil || text != "alert set for Oslo" {
		t.Fatalf("search.set_alert (SSE upstream): %q %v", text, err)
	}
	if _, err := callText(cs, "search.delete_everything", nil); rpcCode(err) != -32000 {
		t.Fatalf("denied aggregated call: %v", err)
	}
	if _, err := callText(cs, "nosuch.tool", nil); rpcCode(err) != -32602 {
		t.Fatalf("unknown tool: %v", err)
	}
	if _, err := callText(cs, "down.get_forecast", nil); err == nil {
		t.Fatal("a call to an unreachable server succeeded")
	}

	// The original SDK: tools/list and tools/call with no initialize.
	sess := analyst.Session()
	code2, _, raw := rawMCP(t, s, sess, "/v1/mcp", nil, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)
	var list struct {
		Result struct {
			Tools []struct {
				Name        string          `json:"name"`
				InputSchema json.RawMessage `json:"inputSchema"`
			} `json:"tools"`
		} `json:"result"`
	}
	if json.Unmarshal([]byte(raw), &list); code2 != 200 || len(list.Result.Tools) != 4 || list.Result.Tools[0].InputSchema == nil {
		t.Fatalf("SDK-style tools/list: %d %s", code2, raw)
	}
	code2, _, raw = rawMCP(t, s, sess, "/v1/mcp", nil,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather.get_forecast","arguments":{"city":"Paris"}}}`)
	if code2 != 200 || !strings.Contains(raw, `"text":"sunny in Paris"`) || strings.Contains(raw, `"isError":true`) {
		t.Fatalf("SDK-style tools/call: %d %s", code2, raw)
	}

	// weather allows each agent 3 calls a minute of one tool: the third
	// is the last; other tools are not held back.
	forecast := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"weather.get_forecast","arguments":{"city":"Oslo"}}}`
	if code2, _, raw = rawMCP(t, s, sess, "/v1/mcp", nil, forecast); code2 != 200 || !strings.Contains(raw, "sunny in Oslo") {
		t.Fatalf("third call: %d %s", code2, raw)
	}
	code2, hdr, raw := rawMCP(t, s, sess, "/v1/mcp", nil, forecast)
	if code2 != 429 || hdr.Get("Retry-After") == "" || !strings.Contains(raw, `"code":-32029`) ||
		!strings.Contains(raw, "at most 3 calls a minute of weather.get_forecast") {
		t.Fatalf("fourth call: %d %v %s", code2, hdr, raw)
	}
	if text, err := callText(cs, "search.set_alert", map[string]any{"city": "Bergen"}); err != nil || text != "alert set for Bergen" {
		t.Fatalf("another tool after the limit: %q %v", text, err)
	}
	if _, metrics := s.admin("GET", "/metrics", nil); !strings.Contains(metrics, `caddy_mastio_mcp_rate_limited_total{scope="item",server="weather"} 1`) {
		t.Fatalf("metrics: %s", grepLines(metrics, "rate_limited"))
	}

	// A server that accepts connections and never answers holds up only
	// itself: while a tools/list waits on it, calls to others go through.
	hang, _ := net.Listen("tcp", "127.0.0.1:0")
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	defer hang.Close()
	if code, body := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, map[string]any{
		"name": "hang", "url": "http://" + hang.Addr().String() + "/mcp", "timeout_seconds": 5}); code != 201 {
		t.Fatalf("register hang: %d %v", code, body["_raw"])
	}
	listDone := make(chan struct{})
	go func() {
		defer close(listDone)
		req, _ := http.NewRequest("POST", s.url("/v1/mcp"), strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
		req.Header.Set("Content-Type", "application/json")
		if resp, err := analyst.Session().HTTPClient().Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-accepted // the list is connecting to the hanging server
	start := time.Now()
	if text, err := callText(cs, "search.set_alert", map[string]any{"city": "Lima"}); err != nil || text != "alert set for Lima" {
		t.Fatalf("call while another server hangs: %q %v", text, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a call to search waited %s for the hanging server", d)
	}
	<-listDone

	// Without a token, nothing.
	resp, err := s.client().Post(s.url("/v1/mcp"), "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
	if err != nil || resp.StatusCode != 401 {
		t.Fatalf("anonymous /v1/mcp: %v %v", err, resp)
	}
	resp.Body.Close()

	if len(leaked) > 0 {
		t.Fatalf("an agent's token reached an upstream: %v", leaked)
	}
	code, body = s.adminCall(t, "GET", "/v1/admin/mcp-servers", adminSecret, nil)
	listed := body["_raw"].(string)
	if code != 200 || strings.Contains(listed, "weather-upstream-secret") || strings.Contains(listed, "search-upstream-secret") ||
		!strings.Contains(listed, `"Authorization":"Bearer {env.WEATHER_TOKEN}"`) || !regexp.MustCompile(`"bearer_secret":"mcp-server-search\.[0-9a-f]+\.token"`).MatchString(listed) {
		t.Fatalf("server list: %d %v", code, body["_raw"])
	}
	cs.Close()
	s.stop()
	db := openDB(t, s.dataDir)
	var stored string
	db.QueryRow(`SELECT config FROM mcp_servers WHERE name = 'search'`).Scan(&stored)
	secretFiles, _ := filepath.Glob(filepath.Join(s.dataDir, "keys", "mcp-server-search.*.token"))
	if strings.Contains(stored, "search-upstream-secret") || len(secretFiles) != 1 || !strings.Contains(stored, filepath.Base(secretFiles[0])) {
		t.Fatalf("stored server config: %s (secret files %v)", stored, secretFiles)
	}
	if m := fileMode(t, secretFiles[0]); m != 0o600 {
		t.Fatalf("upstream secret file mode %04o", m)
	}
	var calls int
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call'`).Scan(&calls)
	if calls < 5 {
		t.Fatalf("mcp.call rows: %d", calls)
	}
	verifyChain(t, db)
}
