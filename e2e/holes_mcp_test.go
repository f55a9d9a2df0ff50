package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// toolRuns counts the tools an upstream actually ran.
type toolRuns struct {
	mu  sync.Mutex
	ran map[string]int
}

func (tr *toolRuns) add(name string) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.ran == nil {
		tr.ran = map[string]int{}
	}
	tr.ran[name]++
}

func (tr *toolRuns) count(name string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.ran[name]
}

// sdkLabUpstream is a stateless MCP server built with the official Go SDK
// (case-sensitive, last duplicate wins) with the tools public and secret.
func sdkLabUpstream(t testing.TB, runs *toolRuns) *httptest.Server {
	server := mcp.NewServer(&mcp.Implementation{Name: "lab", Version: "1.0.0"}, nil)
	for _, name := range []string{"public", "secret"} {
		mcp.AddTool(server, &mcp.Tool{Name: name}, func(ctx context.Context, req *mcp.CallToolRequest, in map[string]any) (*mcp.CallToolResult, any, error) {
			runs.add(name)
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "ran " + name}}}, nil, nil
		})
	}
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{JSONResponse: true, Stateless: true})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// lenientLabUpstream is an MCP server written the way many are: it decodes
// with encoding/json into a struct, matching member names in any letter
// case and letting the last duplicate win, and runs the tool it read.
func lenientLabUpstream(t testing.TB, runs *toolRuns) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m struct {
			ID     json.RawMessage
			Method string
			Params struct{ Name string }
		}
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		var result any = map[string]any{}
		switch m.Method {
		case "tools/call":
			runs.add(m.Params.Name)
			result = map[string]any{"content": []map[string]string{{"type": "text", "text": "ran " + m.Params.Name}}}
		case "tools/list":
			result = map[string]any{"tools": []map[string]any{{"name": "public", "inputSchema": map[string]string{"type": "object"}},
				{"name": "secret", "inputSchema": map[string]string{"type": "object"}}}}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": result})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// rawMCPHeaders posts body with repeatable headers.
func rawMCPHeaders(t testing.TB, s *server, sess *client.Session, path string, hdr http.Header, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", s.url(path), strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, vs := range hdr {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := sess.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
	}
	return resp.StatusCode, b.String()
}

// TestAmbiguousBodiesNeverReachAnUpstream sends messages that readers can
// read in different ways — a member in another letter case, spelled with
// an escape, repeated, inside a batch — to three real upstreams behind
// mastio_mcp: the official Go SDK, the MCP project's reference server
// (TypeScript SDK) and a lenient hand-written server. Each is refused with
// 400 / -32600 and audited, and the denied tool never runs.
func TestAmbiguousBodiesNeverReachAnUpstream(t *testing.T) {
	var sdkRuns, lenientRuns toolRuns
	sdkUp, lenientUp := sdkLabUpstream(t, &sdkRuns), lenientLabUpstream(t, &lenientRuns)
	everything := referenceServer(t)
	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call lab/public
			allow capability:mcp:call tools/call everything/echo
		}`, `
	handle /mcp/sdk {
		mastio_mcp lab
		reverse_proxy {$SDK_UPSTREAM}
	}
	handle /mcp/lenient {
		mastio_mcp lab
		reverse_proxy {$LENIENT_UPSTREAM}
	}
	handle /mcp/everything {
		mastio_mcp everything
		reverse_proxy {$EVERYTHING_ADDR} {
			rewrite /mcp
		}
	}`, "SDK_UPSTREAM="+sdkUp.URL, "LENIENT_UPSTREAM="+lenientUp.URL, fmt.Sprintf("EVERYTHING_ADDR=127.0.0.1:%d", everything))
	caller := makeIdentity(t, s, "caller", "mcp:call")
	sess := caller.Session()

	// The reference server needs a session: a real client opens one.
	cs := connectMCP(t, s, caller, "/mcp/everything")
	everythingHdr := http.Header{"Mcp-Session-Id": {cs.ID()}, "Mcp-Protocol-Version": {cs.InitializeResult().ProtocolVersion}}

	bodies := []struct{ name, body string }{
		{"Method beside method", `{"jsonrpc":"2.0","id":4,"method":"tools/call","Method":"tools/list","params":{"name":"SECRET"}}`},
		{"escaped Method", `{"jsonrpc":"2.0","id":4,"method":"tools/call","\u004dethod":"tools/list","params":{"name":"SECRET"}}`},
		{"METHOD", `{"jsonrpc":"2.0","id":4,"method":"tools/call","METHOD":"tools/list","params":{"name":"SECRET"}}`},
		{"in a batch", `[{"jsonrpc":"2.0","id":4,"method":"tools/call","Method":"tools/list","params":{"name":"SECRET"}}]`},
		{"params twice", `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"SECRET"},"params":{"name":"PUBLIC"}}`},
		{"name twice", `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"SECRET","name":"PUBLIC"}}`},
		{"NAME after name", `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"PUBLIC","NAME":"SECRET"}}`},
		{"Params after params", `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"PUBLIC"},"Params":{"name":"SECRET"}}`},
		{"escaped name after name", `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"PUBLIC","\u004eame":"SECRET"}}`},
	}
	routes := []struct {
		path, public, secret string
		hdr                  http.Header
		ran                  func() int
	}{
		{"/mcp/sdk", "public", "secret", nil, func() int { return sdkRuns.count("secret") }},
		{"/mcp/lenient", "public", "secret", nil, func() int { return lenientRuns.count("secret") }},
		{"/mcp/everything", "echo", "get-env", everythingHdr, nil},
	}
	refused := 0
	for _, rt := range routes {
		// The route works for what the policy allows.
		code, body := rawMCPHeaders(t, s, sess, rt.path, rt.hdr,
			`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"`+rt.public+`","arguments":{"message":"hi"}}}`)
		if code != 200 || strings.Contains(body, `"error"`) {
			t.Fatalf("%s: an allowed call: %d %s", rt.path, code, body)
		}
		for _, b := range bodies {
			t.Run(strings.TrimPrefix(rt.path, "/mcp/")+"/"+b.name, func(t *testing.T) {
				body := strings.NewReplacer("SECRET", rt.secret, "PUBLIC", rt.public).Replace(b.body)
				code, answer := rawMCPHeaders(t, s, sess, rt.path, rt.hdr, body)
				refused++
				if code != 400 || !strings.Contains(answer, `"code":-32600`) {
					t.Errorf("answer %d %s", code, answer)
				}
				if strings.Contains(answer, "ran "+rt.secret) || strings.Contains(answer, "PATH") {
					t.Errorf("the denied tool ran: %s", answer)
				}
				if rt.ran != nil && rt.ran() != 0 {
					t.Errorf("the upstream ran %s %d times", rt.secret, rt.ran())
				}
			})
		}
	}
	// The same rule for the headers: one Mcp-Name, one Mcp-Session-Id.
	code, answer := rawMCPHeaders(t, s, sess, "/mcp/sdk", http.Header{"Mcp-Method": {"tools/call"}, "Mcp-Name": {"public", "secret"}},
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"public"}}`)
	refused++
	if code != 400 || !strings.Contains(answer, "Mcp-Name header appears more than once") {
		t.Errorf("two Mcp-Name headers: %d %s", code, answer)
	}
	// And for the aggregator's input.
	code, answer = rawMCPHeaders(t, s, sess, "/v1/mcp", nil, bodies[0].body)
	if code != 400 || !strings.Contains(answer, `"code":-32600`) {
		t.Errorf("the aggregator: %d %s", code, answer)
	}
	refused++

	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	var audited int
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.refused' AND actor = 'agent:orga::caller'
		AND result = 'denied'`).Scan(&audited)
	if audited != refused {
		t.Fatalf("%d refusals audited, %d made", audited, refused)
	}
	verifyChain(t, db)
}

// readEvents reads an SSE answer until it ends or wait passes, returning
// the data of each event and the id of the first one.
func readEvents(t testing.TB, resp *http.Response, wait time.Duration) (data []string, firstID string) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			if v, ok := strings.CutPrefix(line, "id: "); ok && firstID == "" {
				firstID = v
			}
			if v, ok := strings.CutPrefix(line, "data: "); ok && strings.TrimSpace(v) != "" {
				data = append(data, v)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		resp.Body.Close()
		<-done
	}
	return data, firstID
}

// TestReplayedListsAreFiltered: the reference server keeps its SSE events
// for resumption, and a GET with Last-Event-ID (which the TypeScript SDK
// sends itself when it resumes a stream) replays them. The replayed
// tools/list, prompts/list and resources/templates/list answers are
// filtered like the originals.
func TestReplayedListsAreFiltered(t *testing.T) {
	everything := referenceServer(t)
	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call everything/echo
		}`, `
	handle /mcp/everything {
		mastio_auth
		mastio_mcp everything
		reverse_proxy {$EVERYTHING_ADDR} {
			rewrite /mcp
		}
	}`, fmt.Sprintf("EVERYTHING_ADDR=127.0.0.1:%d", everything))
	caller := makeIdentity(t, s, "caller", "mcp:call")
	cs := connectMCP(t, s, caller, "/mcp/everything")
	hdr := map[string]string{"Mcp-Session-Id": cs.ID(), "Mcp-Protocol-Version": cs.InitializeResult().ProtocolVersion}
	sess := caller.Session()

	for _, list := range []struct{ method, member, allowed, forbidden string }{
		{"tools/list", "tools", `"name":"echo"`, `"get-env"`},
		{"prompts/list", "prompts", "", `"name":`},
		{"resources/templates/list", "resourceTemplates", "", `"uriTemplate":`},
	} {
		t.Run(list.method, func(t *testing.T) {
			req, _ := http.NewRequest("POST", s.url("/mcp/everything"),
				strings.NewReader(`{"jsonrpc":"2.0","id":11,"method":"`+list.method+`"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err := sess.HTTPClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			data, primingID := readEvents(t, resp, 10*time.Second)
			if len(data) != 1 || !strings.Contains(data[0], `"`+list.member+`":[`) || strings.Contains(data[0], list.forbidden) ||
				!strings.Contains(data[0], list.allowed) || primingID == "" {
				t.Fatalf("the POSTed list: %q (first event id %q)", data, primingID)
			}
			// Resume from the priming event: the answer is replayed.
			req, _ = http.NewRequest("GET", s.url("/mcp/everything"), nil)
			req.Header.Set("Accept", "text/event-stream")
			req.Header.Set("Last-Event-ID", primingID)
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			resp, err = sess.HTTPClient().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			replayed, _ := readEvents(t, resp, 3*time.Second)
			found := false
			for _, d := range replayed {
				if strings.Contains(d, `"id":11`) {
					found = true
					if strings.Contains(d, list.forbidden) || !strings.Contains(d, list.allowed) {
						t.Fatalf("the replayed list is not filtered: %s", d)
					}
				}
			}
			if !found {
				t.Fatalf("the list was not replayed: %q", replayed)
			}
		})
	}
}
