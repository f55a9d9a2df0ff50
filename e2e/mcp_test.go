package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// mcpUpstream is a real MCP server built with the official Go SDK: tools
// get_forecast, set_alert, delete_everything and slow (sleeps 3s).
func mcpUpstream(t testing.TB, jsonResponses bool) *httptest.Server {
	return mcptest.Weather(t, jsonResponses)
}

const mcpRoutes = `
	handle /mcp/json {
		mastio_auth
		mastio_mcp weather {
			timeout 2s
		}
		reverse_proxy {$MCP_JSON_UPSTREAM}
	}
	handle /mcp/sse {
		mastio_auth
		mastio_mcp weather
		reverse_proxy {$MCP_SSE_UPSTREAM}
	}
	handle /mcp/limited {
		mastio_mcp weather {
			item_rate 3
		}
		reverse_proxy {$MCP_JSON_UPSTREAM}
	}
	handle /mcp/batch {
		mastio_mcp weather
		reverse_proxy {$MCP_BATCH_UPSTREAM}
	}
	handle /mcp/down {
		mastio_mcp weather
		reverse_proxy 127.0.0.1:{$MCP_DOWN_PORT}
	}
`

func mcpServer(t testing.TB) *server {
	t.Helper()
	return mcpServerWith(t, nil)
}

// mcpServerWith is mcpServer with edit applied to Caddyfile.example first.
func mcpServerWith(t testing.TB, edit func(string) string) *server {
	t.Helper()
	jsonUp, sseUp := mcpUpstream(t, true), mcpUpstream(t, false)
	batchUp := batchUpstream(t)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	downPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return exampleServerWith(t, edit, `
		policy {
			allow capability:mcp:call tools/call weather/get_forecast
			allow capability:mcp:call tools/call weather/slow
			deny * tools/call */delete_*
		}`, mcpRoutes, "MCP_JSON_UPSTREAM="+jsonUp.URL, "MCP_SSE_UPSTREAM="+sseUp.URL, "MCP_BATCH_UPSTREAM="+batchUp.URL,
		fmt.Sprintf("MCP_DOWN_PORT=%d", downPort))
}

// openSessions are closed before a server stops (they hold SSE streams).
var openSessions []*mcp.ClientSession

func closeSessions() {
	for _, cs := range openSessions {
		cs.Close()
	}
	openSessions = nil
}

func connectMCP(t testing.TB, s *server, id *client.Identity, path string) *mcp.ClientSession {
	t.Helper()
	return connectMCPWith(t, s, id, path, nil, "")
}

// connectMCPWith is connectMCP with the client's options, speaking
// version ("": the SDK's latest).
func connectMCPWith(t testing.TB, s *server, id *client.Identity, path string, opts *mcp.ClientOptions, version string) *mcp.ClientSession {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "e2e-agent", Version: "1.0.0"}, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: s.url(path), HTTPClient: id.Session().HTTPClient(), MaxRetries: -1},
		&mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect %s: %v", path, err)
	}
	t.Cleanup(func() { cs.Close() })
	openSessions = append(openSessions, cs)
	return cs
}

func toolNames(t testing.TB, cs *mcp.ClientSession) []string {
	t.Helper()
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
	}
	sort.Strings(names)
	return names
}

func callText(cs *mcp.ClientSession, name string, args map[string]any) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		return "", err
	}
	var out []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			out = append(out, tc.Text)
		}
	}
	return strings.Join(out, " "), nil
}

func rpcCode(err error) int64 {
	var we *jsonrpc.Error
	if errors.As(err, &we) {
		return we.Code
	}
	return 0
}

func TestMCPGatewayPolicyFilteringAndAudit(t *testing.T) {
	s := mcpServer(t)
	caller := makeIdentity(t, s, "caller", "mcp:call")
	stranger := makeIdentity(t, s, "stranger")
	for _, path := range []string{"/mcp/json", "/mcp/sse"} {
		t.Run(path, func(t *testing.T) {
			cs := connectMCP(t, s, caller, path)
			if got := toolNames(t, cs); strings.Join(got, ",") != "get_forecast,slow" {
				t.Fatalf("caller's tools/list: %v", got)
			}
			if text, err := callText(cs, "get_forecast", map[string]any{"city": "Rome"}); err != nil || text != "sunny in Rome" {
				t.Fatalf("allowed call: %q %v", text, err)
			}
			_, err := callText(cs, "delete_everything", nil)
			if rpcCode(err) != -32000 || !strings.Contains(err.Error(), "denied by rule config:") {
				t.Fatalf("denied call: %v", err)
			}
			_, err = callText(cs, "set_alert", map[string]any{"city": "Oslo"})
			if rpcCode(err) != -32000 || !strings.Contains(err.Error(), "no rule allows it") {
				t.Fatalf("unlisted call: %v", err)
			}
			other := connectMCP(t, s, stranger, path)
			if got := toolNames(t, other); len(got) != 0 {
				t.Fatalf("stranger's tools/list: %v", got)
			}
		})
	}

	// A policy change through the admin API applies to the next call.
	code, body := s.adminCall(t, "PUT", "/v1/admin/policies", adminSecret, "allow agent:orga::caller tools/call weather/set_alert\n")
	if code != 200 {
		t.Fatalf("PUT policy: %d %v", code, body["_raw"])
	}
	cs := connectMCP(t, s, caller, "/mcp/sse")
	if text, err := callText(cs, "set_alert", map[string]any{"city": "Oslo"}); err != nil || text != "alert set for Oslo" {
		t.Fatalf("after the policy change: %q %v", text, err)
	}
	if got := toolNames(t, cs); strings.Join(got, ",") != "get_forecast,set_alert,slow" {
		t.Fatalf("tools/list after the policy change: %v", got)
	}
	// The config's deny still wins over a stored allow.
	s.adminCall(t, "PUT", "/v1/admin/policies", adminSecret, "allow agent:orga::caller * weather/*\n")
	if _, err := callText(cs, "delete_everything", nil); rpcCode(err) != -32000 {
		t.Fatalf("deny overridden: %v", err)
	}
	// A bad rule is refused with its line; the policy in force is kept.
	code, body = s.adminCall(t, "PUT", "/v1/admin/policies", adminSecret, "allow agent:orga::caller * weather/*\npermit * * x/y\n")
	if code != 400 || body["error"] != "invalid_policy" || body["line"] != float64(2) {
		t.Fatalf("bad policy: %d %v", code, body["_raw"])
	}
	code, body = s.adminCall(t, "POST", "/v1/admin/policies/check", adminSecret, map[string]any{"agent_id": "orga::caller", "server": "weather", "name": "set_alert"})
	if code != 200 || body["allowed"] != true || body["rule"].(map[string]any)["id"] != "store:1" {
		t.Fatalf("dry run: %d %v", code, body["_raw"])
	}

	// Revocation cuts the agent off mid-session.
	s.adminCall(t, "POST", "/registry/agents/orga::caller/revoke", adminSecret, nil)
	if _, err := callText(cs, "get_forecast", map[string]any{"city": "Rome"}); err == nil {
		t.Fatal("a revoked agent's session still calls tools")
	}

	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	var allowed, denied int
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call' AND result = 'ok'`).Scan(&allowed)
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call' AND result = 'denied'`).Scan(&denied)
	if allowed < 3 || denied < 5 {
		t.Fatalf("mcp.call audit rows: %d allowed, %d denied", allowed, denied)
	}
	var details string
	db.QueryRow(`SELECT details FROM audit_events WHERE event_type = 'mcp.call' AND result = 'ok' ORDER BY seq LIMIT 1`).Scan(&details)
	var d map[string]any
	json.Unmarshal([]byte(details), &d)
	for _, k := range []string{"server", "name", "decision", "rule", "args_sha256", "duration_ms", "upstream_status", "jkt"} {
		if d[k] == nil || d[k] == "" {
			t.Errorf("audit detail %s missing in %s", k, details)
		}
	}
	if strings.Contains(details, "Rome") {
		t.Error("the audit row holds the call's arguments, not their digest")
	}
	verifyChain(t, db)
}

// batchUpstream answers JSON-RPC batches as 2025-03-26 servers did: every
// request gets a result naming what it was; tools/list lists three tools.
func batchUpstream(t testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var msgs []map[string]json.RawMessage
		var body json.RawMessage
		json.NewDecoder(r.Body).Decode(&body)
		batch := len(body) > 0 && body[0] == '['
		if batch {
			json.Unmarshal(body, &msgs)
		} else {
			var m map[string]json.RawMessage
			json.Unmarshal(body, &m)
			msgs = append(msgs, m)
		}
		var out []map[string]any
		for _, m := range msgs {
			var method string
			json.Unmarshal(m["method"], &method)
			res := map[string]any{"echo": method, "params": m["params"], "seen": map[string]string{
				"authorization": r.Header.Get("Authorization"), "dpop": r.Header.Get("DPoP"), "ssl_client_cert": r.Header.Get("X-SSL-Client-Cert")}}
			if method == "tools/list" {
				res = map[string]any{"tools": []map[string]string{{"name": "get_forecast"}, {"name": "set_alert"}, {"name": "delete_everything"}},
					"nextCursor": "page-2"}
			}
			out = append(out, map[string]any{"jsonrpc": "2.0", "id": m["id"], "result": res})
		}
		w.Header().Set("Content-Type", "application/json")
		if ct := r.Header.Get("X-Test-Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct) // an upstream that mislabels its answer
		}
		if batch {
			json.NewEncoder(w).Encode(out)
		} else {
			json.NewEncoder(w).Encode(out[0])
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// rawMCP posts body to path with the agent's DPoP session.
func rawMCP(t testing.TB, s *server, sess *client.Session, path string, hdr map[string]string, body string) (int, http.Header, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.url(path), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := sess.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("POST %s took %s", path, d)
	}
	return resp.StatusCode, resp.Header, string(raw)
}

func TestMCPGatewayRobustness(t *testing.T) {
	s := mcpServer(t)
	caller := makeIdentity(t, s, "caller", "mcp:call")
	sess := caller.Session()
	call := func(name string) string {
		return `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"` + name + `","arguments":{"city":"Rome"}}}`
	}
	cases := []struct {
		name, path, body string
		hdr              map[string]string
		status           int
		want             []string
	}{
		{"malformed JSON", "/mcp/json", `{"jsonrpc":"2.0","id":1,"method":`, nil, 400, []string{`"code":-32700`}},
		{"not JSON-RPC", "/mcp/json", `{"hello":"world"}`, nil, 400, []string{`"code":-32600`}},
		{"tool name not a string", "/mcp/batch", `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":42}}`, nil, 200, []string{`"code":-32602`}},
		{"oversized body", "/mcp/json", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","arguments":{"x":"` + strings.Repeat("a", 1<<20) + `"}}}`, nil, 413, []string{`"code":-32600`, "exceeds"}},
		{"Mcp-Method disagrees with the body", "/mcp/json", call("delete_everything"), map[string]string{"Mcp-Method": "tools/list"}, 400, []string{`"code":-32020`, "HeaderMismatch"}},
		{"Mcp-Name disagrees with the body", "/mcp/json", call("delete_everything"), map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "get_forecast"}, 400, []string{`"code":-32020`}},
		{"2026-07-28 without Mcp-Method", "/mcp/json", call("get_forecast"), map[string]string{"Mcp-Protocol-Version": "2026-07-28"}, 400, []string{`"code":-32020`}},
		{"upstream down", "/mcp/down", call("get_forecast"), nil, 200, []string{`"code":-32001`, "weather is unavailable"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, body := rawMCP(t, s, sess, c.path, c.hdr, c.body)
			if code != c.status {
				t.Fatalf("status %d, want %d: %.300s", code, c.status, body)
			}
			for _, w := range c.want {
				if !strings.Contains(body, w) {
					t.Fatalf("body lacks %s: %.400s", w, body)
				}
			}
			if strings.Contains(body, "everything deleted") {
				t.Fatal("a denied call reached the server")
			}
		})
	}
	// A batch mixing an allowed call, a denied call and a list: the denied
	// call never reaches the server, the list is filtered, order aside.
	code, _, body := rawMCP(t, s, sess, "/mcp/batch", nil, `[`+call("get_forecast")+
		`,{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_everything"}},{"jsonrpc":"2.0","id":9,"method":"tools/list"}]`)
	var answers []struct {
		ID     int             `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &answers); code != 200 || err != nil || len(answers) != 3 {
		t.Fatalf("batch: %d %v %s", code, err, body)
	}
	byID := map[int]int{}
	for i, a := range answers {
		byID[a.ID] = i
	}
	if a := answers[byID[7]]; a.Error != nil || !strings.Contains(string(a.Result), `"echo":"tools/call"`) {
		t.Fatalf("allowed call in the batch: %s", body)
	}
	if a := answers[byID[8]]; a.Error == nil || a.Error.Code != -32000 {
		t.Fatalf("denied call in the batch: %s", body)
	}
	if a := answers[byID[9]]; !strings.Contains(string(a.Result), "page-2") || strings.Contains(string(a.Result), "delete_everything") {
		t.Fatalf("list in the batch: %s", body)
	}
	// A single list is filtered and keeps its cursor.
	_, _, body = rawMCP(t, s, sess, "/mcp/batch", nil, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)
	if !strings.Contains(body, "get_forecast") || strings.Contains(body, "delete_everything") || !strings.Contains(body, "page-2") {
		t.Fatalf("filtered list: %s", body)
	}

	// Without mastio_auth in front, the gateway authenticates the agent
	// itself and passes neither its credentials nor claimed identities on.
	_, _, body = rawMCP(t, s, sess, "/mcp/batch", map[string]string{"X-SSL-Client-Cert": "forged"}, call("get_forecast"))
	if !strings.Contains(body, `"seen":{"authorization":"","dpop":"","ssl_client_cert":""}`) {
		t.Fatalf("headers reaching the upstream: %s", body)
	}
	// A list answered with a wrong Content-Type is filtered all the same.
	_, _, body = rawMCP(t, s, sess, "/mcp/batch", map[string]string{"X-Test-Content-Type": "text/plain"}, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)
	if !strings.Contains(body, "get_forecast") || strings.Contains(body, "delete_everything") {
		t.Fatalf("mislabelled list: %s", body)
	}

	// A slow upstream: a clear JSON-RPC error at the route's 2s timeout.
	cs := connectMCP(t, s, caller, "/mcp/json")
	start := time.Now()
	_, err := callText(cs, "slow", nil)
	if rpcCode(err) != -32001 || time.Since(start) > 8*time.Second || !strings.Contains(err.Error(), "did not answer within 2s") {
		t.Fatalf("slow upstream: %v after %s", err, time.Since(start))
	}

	// Rate limit per agent per tool (3 a minute on /mcp/limited).
	var last int
	var retry string
	for i := 0; i < 4; i++ {
		code, hdr, _ := rawMCP(t, s, sess, "/mcp/limited", nil, call("get_forecast"))
		last, retry = code, hdr.Get("Retry-After")
	}
	if last != 429 || retry == "" {
		t.Fatalf("rate limit: %d Retry-After=%q", last, retry)
	}

	// A session opened by one agent cannot be used by another.
	other := makeIdentity(t, s, "other", "mcp:call")
	sid := cs.ID()
	if sid == "" {
		t.Fatal("no session id")
	}
	code, _, body = rawMCP(t, s, other.Session(), "/mcp/json", map[string]string{"Mcp-Session-Id": sid}, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)
	if code != 403 || !strings.Contains(body, "belongs to another agent") {
		t.Fatalf("session hijack: %d %s", code, body)
	}
	// A session the gateway did not see opened (e.g. before a restart) is
	// not honoured: 404, as for an expired session, so clients start anew.
	code, _, body = rawMCP(t, s, sess, "/mcp/json", map[string]string{"Mcp-Session-Id": "made-up-session"}, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`)
	if code != 404 || !strings.Contains(body, "unknown MCP session") {
		t.Fatalf("unknown session: %d %s", code, body)
	}
	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	var limited, upstreamErr int
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call' AND details LIKE '%"outcome":"rate_limited"%'`).Scan(&limited)
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.call' AND details LIKE '%"outcome":"upstream_error"%'`).Scan(&upstreamErr)
	if limited != 1 || upstreamErr < 2 {
		t.Fatalf("audit: %d rate limited, %d upstream errors", limited, upstreamErr)
	}
}

// TestPolicyBindings: a binding (agent -> server) allows the agent every
// item of the server at once and is removed as simply; concurrent changes
// are all kept.
func TestPolicyBindings(t *testing.T) {
	s := mcpServer(t)
	t.Cleanup(s.kill)
	bot := makeIdentity(t, s, "bot")
	cs := connectMCP(t, s, bot, "/mcp/json")
	if got := toolNames(t, cs); len(got) != 0 {
		t.Fatalf("unbound agent's tools: %v", got)
	}
	if code, body := s.adminCall(t, "POST", "/v1/admin/bindings", adminSecret, map[string]any{"agent_id": "bot", "server": "weather"}); code != 200 || body["bound"] != true {
		t.Fatalf("bind: %d %v", code, body["_raw"])
	}
	if got := strings.Join(toolNames(t, cs), ","); got != "get_forecast,set_alert,slow" {
		t.Fatalf("bound agent's tools (the config's deny on delete_* still wins): %s", got)
	}
	if text, err := callText(cs, "set_alert", map[string]any{"city": "Oslo"}); err != nil || text != "alert set for Oslo" {
		t.Fatalf("bound call: %q %v", text, err)
	}
	code, body := s.adminCall(t, "POST", "/v1/admin/policies/check", adminSecret, map[string]any{"agent_id": "orga::bot", "server": "weather", "name": "set_alert"})
	if code != 200 || body["allowed"] != true || body["rule"].(map[string]any)["principal"] != "agent:orga::bot" {
		t.Fatalf("dry run: %d %v", code, body["_raw"])
	}
	if code, body := s.adminCall(t, "POST", "/v1/admin/bindings", adminSecret, map[string]any{"agent_id": "bot", "server": "we/ather"}); code != 400 {
		t.Fatalf("bad server name: %d %v", code, body["_raw"])
	}

	// Twelve bindings at once: none is lost.
	var wg sync.WaitGroup
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, body := s.adminCall(t, "POST", "/v1/admin/bindings", adminSecret, map[string]any{"agent_id": "bot", "server": fmt.Sprintf("srv%d", i)}); code != 200 {
				t.Errorf("bind srv%d: %d %v", i, code, body["_raw"])
			}
		}()
	}
	wg.Wait()
	_, body = s.adminCall(t, "GET", "/v1/admin/policies", adminSecret, nil)
	for i := 0; i < 12; i++ {
		if !strings.Contains(body["stored"].(string), fmt.Sprintf("allow agent:orga::bot * srv%d/*", i)) {
			t.Errorf("binding srv%d lost:\n%s", i, body["stored"])
		}
	}

	if code, body := s.adminCall(t, "DELETE", "/v1/admin/bindings", adminSecret, map[string]any{"agent_id": "bot", "server": "weather"}); code != 200 || body["bound"] != false {
		t.Fatalf("unbind: %d %v", code, body["_raw"])
	}
	if _, err := callText(cs, "set_alert", map[string]any{"city": "Oslo"}); rpcCode(err) != -32000 {
		t.Fatalf("call after unbinding: %v", err)
	}
	closeSessions()
}
