package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway/gatewaytest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// everythingPolicy lets every agent use one of each kind of item of the
// server "weather" (mcptest.Everything), and withholds the rest.
const everythingPolicy = `allow * tools/call weather/get_forecast
allow * tools/call weather/count
allow * tools/call weather/ask
allow * tools/call weather/note
allow * tools/call weather/confirm
allow * prompts/get weather/greeting
allow * resources/read weather/weather://stations
allow * resources/read weather/weather://city/*
`

// newAggEnv serves the aggregator over mcptest.Everything as "weather".
func newAggEnv(t *testing.T, policy string) *env {
	return newAggEnvWith(t, policy, mastio.Server{})
}

// newAggEnvWith configures "weather" as s (its URL set here).
func newAggEnvWith(t *testing.T, policy string, s mastio.Server) *env {
	t.Helper()
	s.URL = mcptest.Everything(t).URL
	m := mastiotest.New(t, mastio.Settings{Policy: policy, Servers: map[string]*mastio.Server{"weather": &s}}, nil)
	return &env{t: t, m: m, srv: gatewaytest.ServeGateway(t, m, gateway.RouteSettings{}, nil)}
}

// session opens an MCP session with the aggregator for agent a, speaking
// version (a session-keeping revision unless "" picks the SDK's latest),
// with the client options given.
func (e *env) session(a *mastiotest.Agent, version string, opts *mcpsdk.ClientOptions) *mcpsdk.ClientSession {
	e.t.Helper()
	c := mcpsdk.NewClient(&mcpsdk.Implementation{Name: "test-agent", Version: "1"}, opts)
	cs, err := c.Connect(context.Background(), &mcpsdk.StreamableClientTransport{Endpoint: e.srv.URL + "/v1/mcp",
		HTTPClient: a.Session(e.t, e.srv).HTTPClient(), MaxRetries: -1}, &mcpsdk.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return cs
}

// postAgg sends one JSON-RPC body to /v1/mcp (see env.post).
func (e *env) postAgg(a *mastiotest.Agent, body string, hdr ...string) (*http.Response, []byte) {
	e.t.Helper()
	resp, data := e.postTo(a, "/v1/mcp", body, hdr...)
	return resp, []byte(data)
}

// stateful is the last revision with sessions (and server-to-client
// requests on them).
const stateful = "2025-11-25"

func TestAggregatorOffersEveryKindOfItemUnderPolicy(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	a := mastiotest.NewAgent(t, e.m, "browser", "mcp:call")
	for _, version := range []string{"2025-06-18", stateful, ""} {
		cs := e.session(a, version, nil)
		ctx := context.Background()
		if got := strings.Join(toolNames(t, cs), ","); got != "weather.ask,weather.confirm,weather.count,weather.get_forecast,weather.note" {
			t.Fatalf("%q: tools %s", version, got)
		}
		prompts, err := cs.ListPrompts(ctx, nil)
		if err != nil || len(prompts.Prompts) != 1 || prompts.Prompts[0].Name != "weather.greeting" {
			t.Fatalf("%q: prompts %v %v", version, prompts, err)
		}
		resources, err := cs.ListResources(ctx, nil)
		if err != nil || len(resources.Resources) != 1 || resources.Resources[0].URI != "mastio-weather+weather://stations" {
			t.Fatalf("%q: resources %v %v", version, resources, err)
		}
		templates, err := cs.ListResourceTemplates(ctx, nil)
		if err != nil || len(templates.ResourceTemplates) != 1 ||
			templates.ResourceTemplates[0].URITemplate != "mastio-weather+weather://city/{name}" {
			t.Fatalf("%q: templates %v %v", version, templates, err)
		}
		prompt, err := cs.GetPrompt(ctx, &mcpsdk.GetPromptParams{Name: "weather.greeting", Arguments: map[string]string{"name": "Ada"}})
		if err != nil || prompt.Messages[0].Content.(*mcpsdk.TextContent).Text != "Hello, Ada" {
			t.Fatalf("%q: prompt %v %v", version, prompt, err)
		}
		for uri, want := range map[string]string{
			"mastio-weather+weather://stations":  "stations at weather://stations",
			"mastio-weather+weather://city/Oslo": "the city at weather://city/Oslo",
		} {
			res, err := cs.ReadResource(ctx, &mcpsdk.ReadResourceParams{URI: uri})
			if err != nil || res.Contents[0].Text != want || res.Contents[0].URI != uri {
				t.Fatalf("%q: reading %s: %v %v", version, uri, res, err)
			}
		}
		done, err := cs.Complete(ctx, &mcpsdk.CompleteParams{Ref: &mcpsdk.CompleteReference{Type: "ref/prompt", Name: "weather.greeting"},
			Argument: mcpsdk.CompleteParamsArgument{Name: "name", Value: "A"}})
		if err != nil || strings.Join(done.Completion.Values, ",") != "Ada,Alan" {
			t.Fatalf("%q: completion %v %v", version, done, err)
		}
	}
	uses := mastiotest.Events(t, e.m, "mcp.call")
	var seen []string
	for _, ev := range uses {
		d := mastiotest.Details(t, ev)
		seen = append(seen, d["action"].(string)+" "+d["name"].(string)+" "+d["outcome"].(string))
	}
	for _, want := range []string{"prompts/get greeting ok", "resources/read weather://stations ok",
		"resources/read weather://city/Oslo ok", "completion/complete greeting ok"} {
		if !slices.Contains(seen, want) {
			t.Errorf("no audit row %q among %v", want, seen)
		}
	}
}

func TestAggregatorRefusesWithheldItemsAndAuditsThem(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	a := mastiotest.NewAgent(t, e.m, "curious", "mcp:call")
	cs := e.session(a, stateful, nil)
	ctx := context.Background()
	toolNames(t, cs) // the agent's server now knows what it withholds
	for what, use := range map[string]func() error{
		"tool": func() error {
			_, err := cs.CallTool(ctx, &mcpsdk.CallToolParams{Name: "weather.delete_everything", Arguments: map[string]any{}})
			return err
		},
		"prompt": func() error {
			_, err := cs.GetPrompt(ctx, &mcpsdk.GetPromptParams{Name: "weather.secret"})
			return err
		},
		"resource": func() error {
			_, err := cs.ReadResource(ctx, &mcpsdk.ReadResourceParams{URI: "mastio-weather+weather://secret"})
			return err
		},
		"completion": func() error {
			_, err := cs.Complete(ctx, &mcpsdk.CompleteParams{Ref: &mcpsdk.CompleteReference{Type: "ref/prompt", Name: "weather.secret"},
				Argument: mcpsdk.CompleteParamsArgument{Name: "x", Value: "a"}})
			return err
		},
	} {
		if err := use(); err == nil || !strings.Contains(err.Error(), "not allowed for "+a.ID) {
			t.Errorf("withheld %s: %v", what, err)
		}
	}
	var denied []string
	for _, ev := range mastiotest.Events(t, e.m, "mcp.call") {
		if d := mastiotest.Details(t, ev); d["outcome"] == "denied" {
			denied = append(denied, d["name"].(string))
		}
	}
	slices.Sort(denied)
	if strings.Join(denied, ",") != "delete_everything,secret,secret,weather://secret" {
		t.Fatalf("denied rows: %v", denied)
	}
}

// wait returns the next value from ch, failing the test if none comes
// within 10 s (a relay that never arrives).
func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10 s", what)
		panic("unreachable")
	}
}

func TestAggregatorRelaysProgressSamplingAndLogs(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	a := mastiotest.NewAgent(t, e.m, "relayed", "mcp:call")
	progress := make(chan *mcpsdk.ProgressNotificationParams, 4)
	logs := make(chan *mcpsdk.LoggingMessageParams, 4)
	cs := e.session(a, stateful, &mcpsdk.ClientOptions{
		CreateMessageHandler: func(_ context.Context, req *mcpsdk.CreateMessageRequest) (*mcpsdk.CreateMessageResult, error) {
			asked := req.Params.Messages[0].Content.(*mcpsdk.TextContent).Text
			return &mcpsdk.CreateMessageResult{Model: "test", Role: "assistant", Content: &mcpsdk.TextContent{Text: "hello, to " + asked}}, nil
		},
		ElicitationHandler: func(_ context.Context, req *mcpsdk.ElicitRequest) (*mcpsdk.ElicitResult, error) {
			schema, _ := json.Marshal(req.Params.RequestedSchema)
			if !strings.Contains(string(schema), `"enumNames":["Yes","No"]`) {
				return nil, fmt.Errorf("the schema did not come through: %s", schema)
			}
			return &mcpsdk.ElicitResult{Action: "accept", Content: map[string]any{"answer": "yes"}}, nil
		},
		ProgressNotificationHandler: func(_ context.Context, req *mcpsdk.ProgressNotificationClientRequest) { progress <- req.Params },
		LoggingMessageHandler:       func(_ context.Context, req *mcpsdk.LoggingMessageRequest) { logs <- req.Params },
	})
	ctx := context.Background()

	params := &mcpsdk.CallToolParams{Name: "weather.count", Arguments: map[string]any{}}
	params.SetProgressToken("my-token")
	if res, err := cs.CallTool(ctx, params); err != nil || mcptest.TextOf(res) != "counted" {
		t.Fatalf("count: %v %v", res, err)
	}
	for i := 1; i <= 2; i++ {
		p := wait(t, progress, "progress notification")
		if p.ProgressToken != "my-token" || p.Progress != float64(i) || p.Total != 2 {
			t.Fatalf("progress %d: %+v (the agent's own token, not the gateway's)", i, p)
		}
	}

	res, err := cs.CallTool(ctx, &mcpsdk.CallToolParams{Name: "weather.ask", Arguments: map[string]any{}})
	if err != nil || mcptest.TextOf(res) != "the client said: hello, to say something" {
		t.Fatalf("a tool that asks the client to sample: %q %v", mcptest.TextOf(res), err)
	}

	res, err = cs.CallTool(ctx, &mcpsdk.CallToolParams{Name: "weather.confirm", Arguments: map[string]any{}})
	if err != nil || mcptest.TextOf(res) != "accept: yes" {
		t.Fatalf("a tool that elicits: %q %v", mcptest.TextOf(res), err)
	}

	if err := cs.SetLoggingLevel(ctx, &mcpsdk.SetLoggingLevelParams{Level: "info"}); err != nil {
		t.Fatal(err)
	}
	if res, err := cs.CallTool(ctx, &mcpsdk.CallToolParams{Name: "weather.note", Arguments: map[string]any{}}); err != nil || mcptest.TextOf(res) != "logged" {
		t.Fatalf("note: %v %v", res, err)
	}
	if l := wait(t, logs, "log message"); l.Data != "noted" || l.Level != "info" {
		t.Fatalf("log message: %+v", l)
	}
}

// An upstream asks the client for what it did not declare: the upstream
// was told (no sampling capability), and the call fails with the reason.
func TestAggregatorRefusesWhatTheClientDidNotOffer(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	a := mastiotest.NewAgent(t, e.m, "plain", "mcp:call")
	cs := e.session(a, stateful, nil)
	res, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "weather.ask", Arguments: map[string]any{}})
	if err == nil && !res.IsError {
		t.Fatalf("sampling reached a client that does not offer it: %q", mcptest.TextOf(res))
	}
	if msg := fmt.Sprint(err) + mcptest.TextOf(res); !strings.Contains(msg, "sampling") {
		t.Fatalf("the refusal does not say why: %s", msg)
	}
}

func TestAggregatorTellsClientsWhenThePolicyChanges(t *testing.T) {
	e := newAggEnv(t, "allow * tools/call weather/get_forecast\n")
	a := mastiotest.NewAgent(t, e.m, "listening", "mcp:call")
	// A rule is added for one session, and taken away for the next.
	for _, step := range []struct{ version, before, rule, after string }{
		{stateful, "weather.get_forecast", "allow * tools/call weather/count\n", "weather.count,weather.get_forecast"},
		{"", "weather.count,weather.get_forecast", "", "weather.get_forecast"},
	} {
		changed := make(chan struct{}, 8)
		cs := e.session(a, step.version, &mcpsdk.ClientOptions{
			ToolListChangedHandler: func(context.Context, *mcpsdk.ToolListChangedRequest) { changed <- struct{}{} },
		})
		if got := strings.Join(toolNames(t, cs), ","); got != step.before {
			t.Fatalf("%q: before: %s, want %s", step.version, got, step.before)
		}
		if _, err := e.m.SetPolicy(context.Background(), step.rule, nil); err != nil {
			t.Fatal(err)
		}
		wait(t, changed, "notifications/tools/list_changed")
		if got := strings.Join(toolNames(t, cs), ","); got != step.after {
			t.Fatalf("%q: after the change: %s, want %s", step.version, got, step.after)
		}
	}
}

func TestAggregatorSessionsBelongToTheirAgent(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	owner := mastiotest.NewAgent(t, e.m, "owner", "mcp:call")
	cs := e.session(owner, stateful, nil)
	other := mastiotest.NewAgent(t, e.m, "other", "mcp:call")
	resp, body := e.postAgg(other, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, "Mcp-Session-Id", cs.ID())
	if resp.StatusCode != 403 || !strings.Contains(string(body), "belongs to another agent") {
		t.Fatalf("another agent's session: %d %s", resp.StatusCode, body)
	}
	if refused := mastiotest.Events(t, e.m, "mcp.refused"); len(refused) != 1 || refused[0].Actor != "agent:"+other.ID {
		t.Fatalf("the refusal is not audited against the other agent: %v", refused)
	}
}

func TestAggregatorEndsTheSessionsOfARevokedAgent(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	a := mastiotest.NewAgent(t, e.m, "doomed", "mcp:call")
	cs := e.session(a, stateful, nil)
	toolNames(t, cs)
	if _, err := e.m.Registry().Revoke(context.Background(), a.ID, "laptop lost", "admin", nil); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() { ended <- cs.Wait() }()
	wait(t, ended, "end of the revoked agent's session")
	if _, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "weather.get_forecast", Arguments: map[string]any{"city": "x"}}); err == nil {
		t.Fatal("a revoked agent's call went through")
	}
	for _, ev := range mastiotest.Events(t, e.m, "mcp.call") {
		if d := mastiotest.Details(t, ev); d["outcome"] == "ok" {
			t.Fatalf("a call of the revoked agent was answered: %v", d)
		}
	}
}

// The original Mastio SDK posts tools/list and tools/call without a
// session or initialize, and reads a JSON answer.
func TestAggregatorAnswersSessionlessRequestsInJSON(t *testing.T) {
	e := newAggEnv(t, everythingPolicy)
	a := mastiotest.NewAgent(t, e.m, "original", "mcp:call")
	post := func(body string) (int, string, map[string]any) {
		resp, data := e.postAgg(a, body)
		var msg map[string]any
		json.Unmarshal(data, &msg)
		return resp.StatusCode, resp.Header.Get("Content-Type"), msg
	}
	status, ctype, msg := post(`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"weather.get_forecast","arguments":{"city":"Lima"}}}`)
	if status != 200 || !strings.HasPrefix(ctype, "application/json") || msg["id"] != float64(7) {
		t.Fatalf("sessionless call: %d %s %v", status, ctype, msg)
	}
	content := msg["result"].(map[string]any)["content"].([]any)
	if content[0].(map[string]any)["text"] != "sunny in Lima" {
		t.Fatalf("sessionless call: %v", msg)
	}
	_, _, msg = post(`{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"weather.delete_everything","arguments":{}}}`)
	if e, _ := msg["error"].(map[string]any); e == nil || !strings.Contains(e["message"].(string), "not allowed") {
		t.Fatalf("sessionless denied call: %v", msg)
	}
}

// A sessionless call over a rate limit is answered 429 with Retry-After
// (as the per-server routes answer it); in a session, the error says when.
func TestAggregatorRateLimitsSayWhenToRetry(t *testing.T) {
	e := newAggEnvWith(t, everythingPolicy, mastio.Server{ItemRate: 1})
	a := mastiotest.NewAgent(t, e.m, "hasty", "mcp:call")
	call := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather.get_forecast","arguments":{"city":"Rome"}}}`
	var statuses []int
	for range 2 {
		resp, body := e.postAgg(a, call)
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == 429 && (resp.Header.Get("Retry-After") == "" ||
			!strings.Contains(string(body), "at most 1 calls a minute of weather.get_forecast")) {
			t.Fatalf("429 answer: %v %s", resp.Header, body)
		}
	}
	if statuses[0] != 200 || statuses[1] != 429 {
		t.Fatalf("statuses %v, want 200 then 429", statuses)
	}
	cs := e.session(a, stateful, nil)
	_, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "weather.get_forecast", Arguments: map[string]any{"city": "x"}})
	if err == nil || !strings.Contains(err.Error(), "rate limit exceeded") {
		t.Fatalf("in a session: %v", err)
	}
	if d := mastiotest.Details(t, mastiotest.Events(t, e.m, "mcp.call")[1]); d["outcome"] != "rate_limited" {
		t.Fatalf("the limited call: %v", d)
	}
}

// An upstream that lists its tools a page at a time is listed whole.
func TestAggregatorListsEveryPageOfAnUpstream(t *testing.T) {
	server := mcpsdk.NewServer(&mcpsdk.Implementation{Name: "paged", Version: "1"}, &mcpsdk.ServerOptions{PageSize: 2})
	var want []string
	for i := range 5 {
		name := fmt.Sprintf("tool%d", i)
		want = append(want, "paged."+name)
		server.AddTool(&mcpsdk.Tool{Name: name, InputSchema: &jsonschema.Schema{Type: "object"}},
			func(context.Context, *mcpsdk.CallToolRequest) (*mcpsdk.CallToolResult, error) {
				return mcptest.Text(name), nil
			})
	}
	up := httptest.NewServer(mcpsdk.NewStreamableHTTPHandler(func(*http.Request) *mcpsdk.Server { return server }, nil))
	t.Cleanup(up.Close)
	m := mastiotest.New(t, mastio.Settings{Policy: "allow * tools/call paged/*\n", Servers: map[string]*mastio.Server{"paged": {URL: up.URL}}}, nil)
	e := &env{t: t, m: m, srv: gatewaytest.ServeGateway(t, m, gateway.RouteSettings{}, nil)}
	cs := e.session(mastiotest.NewAgent(t, m, "pager", "mcp:call"), stateful, nil)
	if got := strings.Join(toolNames(t, cs), ","); got != strings.Join(want, ",") {
		t.Fatalf("tools: %s, want %s", got, strings.Join(want, ","))
	}
}
