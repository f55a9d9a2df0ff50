package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
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

// TestReplayRefusedAfterRestart: a client assertion and a DPoP proof that
// were used once are refused after the gateway restarts, whether it was
// stopped (SIGTERM) or killed (SIGKILL): an assertion captured from an
// agent mints no token for a caller holding neither its key nor its
// certificate, and a captured proof is not accepted again.
func TestReplayRefusedAfterRestart(t *testing.T) {
	s, _ := tokenServer(t)
	id := makeIdentity(t, s, "agent", "api:read")
	sess := id.Session()
	ctx := context.Background()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			// The agent's own use of an assertion and of a proof.
			assertion, _ := sess.Assertion("")
			attacker := newAttacker(t, s, id)
			tokenProof := func() string {
				return attacker.proof(attacker.dkey, "", func(h, c map[string]any) {
					c["htm"], c["htu"] = "POST", s.url("/v1/auth/token")
					delete(c, "ath")
				})
			}
			mint := func() map[string]any {
				resp := s.do(t, "POST", "/v1/auth/token", map[string][]string{"Content-Type": {"application/json"}, "DPoP": {tokenProof()}},
					nil, []byte(`{"client_assertion":"`+assertion+`"}`))
				b := readBody(t, resp)
				b["_status"] = resp.StatusCode
				return b
			}
			if b := mint(); b["_status"] != 200 {
				t.Fatalf("first use of the assertion: %v", b["_raw"])
			}
			resp, err := sess.HTTPClient().Get(s.url("/api/x"))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("a guarded request: %v %v", resp, err)
			}
			resp.Body.Close()
			tok, err := sess.Token(ctx)
			if err != nil {
				t.Fatal(err)
			}
			proof, _ := sess.Proof("GET", s.url("/api/x"), tok)
			guarded := func() (int, string) {
				resp := s.do(t, "GET", "/api/x", map[string][]string{"Authorization": {"DPoP " + tok}, "DPoP": {proof}}, &id.Certificate, nil)
				b := readBody(t, resp)
				return resp.StatusCode, b["_raw"].(string)
			}
			if code, body := guarded(); code != 200 {
				t.Fatalf("first use of the proof: %d %s", code, body)
			}
			if code, _ := guarded(); code != 401 {
				t.Fatalf("a replayed proof before the restart: %d", code)
			}

			s.cmd.Process.Signal(sig)
			s.waitExit()
			s.start()

			if b := mint(); b["_status"] != 401 || b["error"] != "invalid_client" || !strings.Contains(b["_raw"].(string), "already used") {
				t.Fatalf("the assertion replayed after a restart: %v", b["_raw"])
			}
			if code, body := guarded(); code != 401 || !strings.Contains(body, "dpop") {
				t.Fatalf("the proof replayed after a restart: %d %s", code, body)
			}
			// The agent itself carries on: its session picks up the new
			// nonce and signs fresh proofs.
			resp, err = sess.HTTPClient().Get(s.url("/api/x"))
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("the agent after the restart: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

// TestIdentityHeadersComeFromTheMastio: whatever identity headers a caller
// sends are removed, in certificate and token mode alike; the upstream
// gets X-Agent-Id and X-Agent-Spiffe-Id as the Mastio verified them.
func TestIdentityHeadersComeFromTheMastio(t *testing.T) {
	s, _ := tokenServer(t)
	id := makeIdentity(t, s, "agent", "api:read")
	forged := map[string][]string{"X-Agent-Id": {"orga::admin", "orga::root"}, "X-Agent-Spiffe-Id": {"spiffe://mastio.local/orga/admin"},
		"X-Mastio-Scope": {"admin:write"}, "X-Cullis-Agent": {"orga::admin"}}
	check := func(what string, b map[string]any) {
		t.Helper()
		if b["x_agent_id"] != "orga::agent" || b["x_agent_spiffe_id"] != "spiffe://mastio.local/orga/agent" ||
			b["x_mastio_scope"] != "" || b["x_cullis_agent"] != "" {
			t.Fatalf("%s: the upstream got %v", what, b["_raw"])
		}
	}
	resp := s.do(t, "GET", "/mtls/x", forged, &id.Certificate, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("mtls: %d", resp.StatusCode)
	}
	check("mastio_auth mtls", readBody(t, resp))

	req, _ := http.NewRequest("GET", s.url("/api/x"), nil)
	for k, v := range forged {
		req.Header[k] = v
	}
	resp, err := id.Session().HTTPClient().Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("token: %v %v", resp, err)
	}
	check("mastio_auth (token)", readBody(t, resp))
}

// TestRejectedRegistrationWritesNoCredential: an MCP server registration
// the admin API refuses leaves no credential behind; a replaced or removed
// server's credential is removed with it.
func TestRejectedRegistrationWritesNoCredential(t *testing.T) {
	s := identityServer(t)
	tokens := func() []string {
		files, _ := filepath.Glob(filepath.Join(s.dataDir, "keys", "mcp-server-*"))
		return files
	}
	for _, body := range []string{
		`{"name":"weather","url":"ftp://weather.internal/mcp","bearer_token":"s3cret-token-1"}`,
		`{"name":"bad name","url":"https://weather.internal/mcp","bearer_token":"s3cret-token-2"}`,
		`{"name":"weather","url":"https://weather.internal/mcp","bearer_token":"s3cret-token-3","timeout_seconds":-1}`,
	} {
		if code, b := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, body); code != 400 {
			t.Fatalf("%s: %d %v", body, code, b["_raw"])
		}
		if files := tokens(); len(files) != 0 {
			t.Fatalf("a refused registration wrote %v", files)
		}
	}
	register := func(token string) {
		t.Helper()
		if code, b := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret,
			`{"name":"weather","url":"https://weather.internal/mcp","bearer_token":"`+token+`"}`); code != 201 {
			t.Fatalf("register: %d %v", code, b["_raw"])
		}
	}
	register("first-token-value")
	first := tokens()
	register("second-token-value")
	second := tokens()
	if len(first) != 1 || len(second) != 1 || first[0] == second[0] {
		t.Fatalf("credentials after a replacement: %v then %v", first, second)
	}
	if data, _ := os.ReadFile(second[0]); string(data) != "second-token-value" || fileMode(t, second[0]) != 0o600 {
		t.Fatalf("the stored credential: %q mode %v", data, fileMode(t, second[0]))
	}
	if code, b := s.adminCall(t, "DELETE", "/v1/admin/mcp-servers/weather", adminSecret, nil); code != 200 {
		t.Fatalf("delete: %d %v", code, b["_raw"])
	}
	if files := tokens(); len(files) != 0 {
		t.Fatalf("a removed server left %v", files)
	}
}

// holdUpstream is an MCP server (official Go SDK, SSE answers, sessions
// with GET streams) whose tool "hold" reports that it started and then
// runs until it is cancelled or ten seconds pass.
func holdUpstream(t testing.TB, started chan<- struct{}) *httptest.Server {
	server := mcp.NewServer(&mcp.Implementation{Name: "hold", Version: "1.0.0"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "hold"}, func(ctx context.Context, req *mcp.CallToolRequest, in map[string]any) (*mcp.CallToolResult, any, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "held result"}}}, nil, nil
	})
	srv := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil))
	t.Cleanup(srv.Close)
	return srv
}

// TestRevocationEndsOpenStreamsAndCalls: an agent holds a GET stream open
// and has a call in flight; revoking it (or rotating its certificate out)
// ends both within a second, the call's result is not delivered, and its
// audit row, after the change's, says so.
func TestRevocationEndsOpenStreamsAndCalls(t *testing.T) {
	started := make(chan struct{}, 4)
	up := holdUpstream(t, started)
	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call hold/hold
		}`, `
	handle /mcp/hold {
		mastio_auth
		mastio_mcp hold
		reverse_proxy {$HOLD_UPSTREAM}
	}`, "HOLD_UPSTREAM="+up.URL)

	for _, change := range []struct{ name, path, event string }{
		{"revoke", "/revoke", "agent.revoked"},
		{"rotate", "/rotate-cert", "agent.cert_rotated"},
	} {
		t.Run(change.name, func(t *testing.T) {
			agent := makeIdentity(t, s, "agent-"+change.name, "mcp:call")
			hc := agent.Session().HTTPClient()
			c := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil)
			cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: s.url("/mcp/hold"), HTTPClient: hc,
				MaxRetries: -1, DisableStandaloneSSE: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			hdr := map[string]string{"Mcp-Session-Id": cs.ID(), "Mcp-Protocol-Version": cs.InitializeResult().ProtocolVersion}

			// A GET stream held open.
			req, _ := http.NewRequest("GET", s.url("/mcp/hold"), nil)
			req.Header.Set("Accept", "text/event-stream")
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			stream, err := hc.Do(req)
			if err != nil || stream.StatusCode != 200 {
				t.Fatalf("GET stream: %v %v", stream, err)
			}
			streamEnded := make(chan time.Time, 1)
			go func() {
				io.Copy(io.Discard, stream.Body)
				streamEnded <- time.Now()
			}()
			// A call in flight.
			type answer struct {
				code int
				body string
				at   time.Time
			}
			answered := make(chan answer, 1)
			go func() {
				req, _ := http.NewRequest("POST", s.url("/mcp/hold"), strings.NewReader(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"hold"}}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				for k, v := range hdr {
					req.Header.Set(k, v)
				}
				resp, err := hc.Do(req)
				if err != nil {
					answered <- answer{0, err.Error(), time.Now()}
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				answered <- answer{resp.StatusCode, string(body), time.Now()}
			}()
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not reach the upstream")
			}

			name := "orga::agent-" + change.name
			code, b := s.adminCall(t, "POST", "/v1/admin/agents/"+name+change.path, adminSecret, nil)
			if code != 200 {
				t.Fatalf("%s: %d %v", change.name, code, b["_raw"])
			}
			changed := time.Now()
			select {
			case at := <-streamEnded:
				if d := at.Sub(changed); d > time.Second {
					t.Errorf("the GET stream ended %s after the %s", d, change.name)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the GET stream is still open 5s after the %s", change.name)
			}
			select {
			case a := <-answered:
				if d := a.at.Sub(changed); d > time.Second {
					t.Errorf("the call was answered %s after the %s", d, change.name)
				}
				if a.code != 401 || strings.Contains(a.body, "held result") {
					t.Fatalf("the call in flight: %d %s", a.code, a.body)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the call is still in flight 5s after the %s", change.name)
			}
		})
	}
	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	for _, change := range []struct{ agent, event string }{{"orga::agent-revoke", "agent.revoked"}, {"orga::agent-rotate", "agent.cert_rotated"}} {
		var changeSeq, callSeq int64
		var outcome string
		db.QueryRow(`SELECT seq FROM audit_events WHERE event_type = ? AND subject = ?`, change.event, change.agent).Scan(&changeSeq)
		db.QueryRow(`SELECT seq, json_extract(details, '$.outcome') FROM audit_events WHERE event_type = 'mcp.call' AND actor = ?`,
			"agent:"+change.agent).Scan(&callSeq, &outcome)
		if changeSeq == 0 || callSeq < changeSeq || outcome != "agent_revoked" {
			t.Errorf("%s: %s at seq %d, the call at seq %d with outcome %q", change.agent, change.event, changeSeq, callSeq, outcome)
		}
	}
	verifyChain(t, db)
}

// metric returns the value of one sample of Caddy's /metrics (0 if absent).
func (s *server) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	_, body := s.admin("GET", "/metrics", nil)
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if contains(line, labels...) {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			return v
		}
	}
	return 0
}

// TestRefusalsNamingAnAgentAreAudited: a refusal whose credentials name an
// agent — another agent's MCP session, a revoked agent's token on an open
// connection — is audited; anonymous refusals are counted, not audited.
func TestRefusalsNamingAnAgentAreAudited(t *testing.T) {
	s := mcpServer(t)
	owner := makeIdentity(t, s, "owner", "mcp:call")
	other := makeIdentity(t, s, "other", "mcp:call")
	cs := connectMCP(t, s, owner, "/mcp/json")
	list := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	if code, _, body := rawMCP(t, s, other.Session(), "/mcp/json", map[string]string{"Mcp-Session-Id": cs.ID()}, list); code != 403 {
		t.Fatalf("another agent's session: %d %s", code, body)
	}
	// The revoked agent's connections are still open: its next requests
	// are refused with its identity known.
	tr := &http.Transport{TLSClientConfig: owner.TLSConfig(), ForceAttemptHTTP2: true}
	sess, err := owner.NewSession(s.url(""), tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/mcp/json", "/mcp/batch"} { // behind mastio_auth, and authenticated by mastio_mcp
		if code, _, _ := rawMCP(t, s, sess, path, nil, list); code != 200 {
			t.Fatalf("%s before the revocation: %d", path, code)
		}
	}
	if code, b := s.adminCall(t, "POST", "/v1/admin/agents/orga::owner/revoke", adminSecret, nil); code != 200 {
		t.Fatalf("revoke: %d %v", code, b["_raw"])
	}
	tok, err := sess.Token(context.Background()) // minted before the revocation
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/mcp/json", "/mcp/batch"} {
		proof, _ := sess.Proof("POST", s.url(path), tok)
		req, _ := http.NewRequest("POST", s.url(path), strings.NewReader(list))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "DPoP "+tok)
		req.Header.Set("DPoP", proof)
		resp, err := tr.RoundTrip(req) // on the connection opened before the revocation
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(string(body), "revoked") {
			t.Fatalf("%s after the revocation: %d %s", path, resp.StatusCode, body)
		}
	}
	// A new handshake with the revoked certificate is refused, and audited.
	expectHandshakeRefused(t, s, owner.Certificate, "the revoked certificate")
	// Anonymous refusals: counted, not audited.
	before := s.metric(t, "caddy_mastio_auth_total", `result="deny"`, `reason="missing_token"`)
	for i := 0; i < 20; i++ {
		resp, err := s.client().Post(s.url("/mcp/json"), "application/json", strings.NewReader(list))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("anonymous: %d", resp.StatusCode)
		}
	}
	if after := s.metric(t, "caddy_mastio_auth_total", `result="deny"`, `reason="missing_token"`); after-before != 20 {
		t.Fatalf("anonymous refusals counted: %v -> %v", before, after)
	}
	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	rows := func(q string, args ...any) int {
		var n int
		db.QueryRow(q, args...).Scan(&n)
		return n
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.refused' AND actor = 'agent:orga::other'
		AND json_extract(details, '$.reason') = 'session_of_another_agent'`); n != 1 {
		t.Errorf("session refusals audited: %d", n)
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'auth.refused' AND actor = 'agent:orga::owner'
		AND json_extract(details, '$.reason') = 'agent_revoked' AND json_extract(details, '$.method') = 'POST'
		AND seq > (SELECT seq FROM audit_events WHERE event_type = 'agent.revoked')`); n != 2 {
		t.Errorf("revoked-agent refusals audited: %d", n)
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'auth.refused' AND actor = 'agent:orga::owner'
		AND json_extract(details, '$.stage') = 'tls_handshake'`); n < 1 {
		t.Errorf("refused handshakes audited: %d", n)
	}
	if n := rows(`SELECT COUNT(*) FROM audit_events WHERE event_type IN ('auth.refused', 'mcp.refused') AND actor NOT LIKE 'agent:%'`); n != 0 {
		t.Errorf("anonymous refusals audited: %d", n)
	}
	verifyChain(t, db)
}

// TestAdminSecretFailuresLimitedGlobally: failed admin secrets are limited
// per address and in total, so 50 addresses guessing 10 times each cannot
// write 500 audit rows; the operator's right secret still works.
func TestAdminSecretFailuresLimitedGlobally(t *testing.T) {
	s := exampleServerWith(t, func(cf string) string {
		return strings.Replace(cf, "\t\tprotocols h1 h2\n", "\t\tprotocols h1 h2\n\t\ttrusted_proxies static 127.0.0.1/32\n", 1)
	}, "", "")
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	for a := 0; a < 50; a++ {
		wg.Add(1)
		go func(a int) {
			defer wg.Done()
			c := s.client()
			for i := 0; i < 10; i++ {
				req, _ := http.NewRequest("GET", s.url("/v1/admin/agents"), nil)
				req.Header.Set("X-Admin-Secret", fmt.Sprintf("guess-%d-%d-aaaaaaaaaaaaaa", a, i))
				req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", a+1))
				resp, err := c.Do(req)
				if err != nil {
					continue
				}
				resp.Body.Close()
				mu.Lock()
				statuses[resp.StatusCode]++
				mu.Unlock()
			}
		}(a)
	}
	wg.Wait()
	if statuses[429] == 0 || statuses[403]+statuses[429] != 500 {
		t.Fatalf("answers to 500 wrong secrets: %v", statuses)
	}
	req, _ := http.NewRequest("GET", s.url("/v1/admin/agents"), nil)
	req.Header.Set("X-Admin-Secret", adminSecret)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	resp, err := s.client().Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("the right secret during the attack: %v %v", resp, err)
	}
	resp.Body.Close()
	if s.metric(t, "caddy_mastio_rate_limited_total", `route="admin_auth"`, `scope="global"`) == 0 {
		t.Fatal("global refusals not counted")
	}
	s.stop()
	n := eventCounts(t, openDB(t, s.dataDir))["admin.auth_failed"]
	if n > 100 || n < 10 {
		t.Fatalf("%d failures audited for 500 attempts (want the global limit, 60 a minute)", n)
	}
}

// TestSecretsNeverReachALog switches on an access log (and debug logging)
// and sends what carries secrets — admin calls, token requests, guarded
// requests, enrollment status polls, a request whose upstream is down —
// then reads every log line: the admin secret, the DPoP proofs and the
// tokens sent never appear, and the entries show the headers REDACTED.
func TestSecretsNeverReachALog(t *testing.T) {
	up := echoUpstream(t)
	accessLog := filepath.Join(workDir(t), "access.log")
	s := exampleServerWith(t, func(cf string) string {
		cf = strings.Replace(cf, "{\n\tadmin ", "{\n\tdebug\n\tadmin ", 1)
		return strings.Replace(cf, "localhost:{$MASTIO_HTTPS_PORT:9443} {\n", "localhost:{$MASTIO_HTTPS_PORT:9443} {\n\tlog {\n\t\toutput file "+
			accessLog+"\n\t\tformat json\n\t}\n", 1)
	}, "", guardedRoutes+`
	handle /down/* {
		mastio_auth
		reverse_proxy 127.0.0.1:1
	}`, "MASTIO_UPSTREAM="+up.URL)
	var secrets []string
	for _, path := range []string{"/v1/admin/agents", "/v1/admin/nothing-here", "/proxy/admin/agents"} {
		s.adminCall(t, "GET", path, adminSecret, nil)
	}
	secrets = append(secrets, adminSecret)
	id := makeIdentity(t, s, "agent", "api:read")
	sess := id.Session()
	for _, path := range []string{"/api/x", "/down/x"} {
		resp, err := sess.HTTPClient().Get(s.url(path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	tok, _ := sess.Token(context.Background())
	proof, _ := sess.Proof("GET", s.url("/api/x"), tok)
	s.do(t, "GET", "/api/x", map[string][]string{"Authorization": {"DPoP " + tok}, "DPoP": {proof}}, &id.Certificate, nil).Body.Close()
	secrets = append(secrets, tok, proof)
	// An enrollment polled with its proof of possession.
	p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), "id"),
		RootCAs: s.rootPool(), Requester: client.Requester{Name: "N", Email: "n@orga.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.stop()

	data, err := os.ReadFile(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	all := string(data) + s.out.String()
	for _, secret := range secrets {
		if strings.Contains(all, secret) {
			t.Errorf("a log holds a secret: %.20s...", secret)
		}
	}
	seen := map[string]int{}
	for _, line := range strings.Split(string(data), "\n") {
		var entry struct {
			Msg     string `json:"msg"`
			Status  int    `json:"status"`
			Request struct {
				URI     string              `json:"uri"`
				Headers map[string][]string `json:"headers"`
			} `json:"request"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil || entry.Msg != "handled request" {
			continue
		}
		for _, h := range []string{"X-Admin-Secret", "Dpop", "X-Enrollment-Proof", "Authorization"} {
			if v, ok := entry.Request.Headers[h]; ok {
				seen[h]++
				if len(v) != 1 || v[0] != "REDACTED" {
					t.Errorf("%s logged for %s: %v", h, entry.Request.URI, v)
				}
			}
		}
		seen[entry.Request.URI]++
	}
	for _, want := range []string{"X-Admin-Secret", "Dpop", "X-Enrollment-Proof", "/v1/admin/nothing-here", "/down/x", "/v1/auth/token"} {
		if seen[want] == 0 {
			t.Errorf("no access log entry with %s: %v", want, seen)
		}
	}
}
