package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestReferenceServerThroughTheAggregator puts the MCP project's
// reference server behind the /v1/mcp aggregator and uses every kind of
// item through it with the official Go SDK client in a session: what the
// policy allows works, with progress, log messages and resource updates
// relayed and a cancellation reaching the upstream call; what it withholds
// is neither listed nor usable; every use is an audit row.
func TestReferenceServerThroughTheAggregator(t *testing.T) {
	port := referenceServer(t)
	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call     everything/trigger-long-running-operation
			allow capability:mcp:call tools/call     everything/toggle-*
			allow capability:mcp:call prompts/get    everything/completable-prompt
			allow capability:mcp:call resources/read everything/demo://resource/static/document/features.md
			allow capability:mcp:call resources/read everything/demo://resource/dynamic/text/*
		}
		mcp_server everything {
			url {$EVERYTHING_URL}
			prefix ev
		}`, "", fmt.Sprintf("EVERYTHING_URL=http://127.0.0.1:%d/mcp", port))
	t.Cleanup(s.kill)
	caller := makeIdentity(t, s, "caller", "mcp:call")

	progress := make(chan *mcp.ProgressNotificationParams, 64)
	logs := make(chan *mcp.LoggingMessageParams, 64)
	updates := make(chan string, 64)
	cs := connectMCPWith(t, s, caller, "/v1/mcp", &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, r *mcp.ProgressNotificationClientRequest) { progress <- r.Params },
		LoggingMessageHandler:       func(_ context.Context, r *mcp.LoggingMessageRequest) { logs <- r.Params },
		ResourceUpdatedHandler:      func(_ context.Context, r *mcp.ResourceUpdatedNotificationRequest) { updates <- r.Params.URI },
	}, "2025-11-25")
	ctx := context.Background()

	// Lists: only what the policy allows, under the server's prefix.
	if got := strings.Join(toolNames(t, cs), ","); got != "ev.toggle-simulated-logging,ev.toggle-subscriber-updates,ev.trigger-long-running-operation" {
		t.Fatalf("tools: %s", got)
	}
	prompts, err := cs.ListPrompts(ctx, nil)
	if err != nil || len(prompts.Prompts) != 1 || prompts.Prompts[0].Name != "ev.completable-prompt" {
		t.Fatalf("prompts: %v %v", prompts, err)
	}
	resources, err := cs.ListResources(ctx, nil)
	if err != nil || len(resources.Resources) != 1 || resources.Resources[0].URI != "mastio-ev+demo://resource/static/document/features.md" {
		t.Fatalf("resources: %v %v", resources, err)
	}
	templates, err := cs.ListResourceTemplates(ctx, nil)
	if err != nil || len(templates.ResourceTemplates) != 1 ||
		templates.ResourceTemplates[0].URITemplate != "mastio-ev+demo://resource/dynamic/text/{resourceId}" {
		t.Fatalf("templates: %v %v", templates, err)
	}

	// Uses of each kind.
	prompt, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "ev.completable-prompt",
		Arguments: map[string]string{"department": "Sales", "name": "Eve"}})
	if err != nil || !strings.Contains(prompt.Messages[0].Content.(*mcp.TextContent).Text, "promote Eve to the head of the Sales team") {
		t.Fatalf("prompt: %v %v", prompt, err)
	}
	done, err := cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "ev.completable-prompt"},
		Argument: mcp.CompleteParamsArgument{Name: "name", Value: "D"},
		Context:  &mcp.CompleteContext{Arguments: map[string]string{"department": "Sales"}}})
	if err != nil || strings.Join(done.Completion.Values, ",") != "David" {
		t.Fatalf("completion: %v %v", done, err)
	}
	doc, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "mastio-ev+demo://resource/static/document/features.md"})
	if err != nil || !strings.Contains(doc.Contents[0].Text, "Everything Server - Features") {
		t.Fatalf("static resource: %v", err)
	}
	dyn, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "mastio-ev+demo://resource/dynamic/text/3"})
	if err != nil || dyn.Contents[0].URI != "mastio-ev+demo://resource/dynamic/text/3" {
		t.Fatalf("templated resource: %v %v", dyn, err)
	}

	// Withheld, each kind: refused and audited.
	for what, use := range map[string]func() error{
		"tool": func() error { _, err := callText(cs, "ev.echo", map[string]any{"message": "x"}); return err },
		"prompt": func() error {
			_, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "ev.simple-prompt"})
			return err
		},
		"resource": func() error {
			_, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "mastio-ev+demo://resource/static/document/architecture.md"})
			return err
		},
		"template": func() error {
			_, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "mastio-ev+demo://resource/dynamic/blob/1"})
			return err
		},
	} {
		if err := use(); err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Errorf("withheld %s: %v", what, err)
		}
	}

	// Progress under the caller's own token.
	params := &mcp.CallToolParams{Name: "ev.trigger-long-running-operation", Arguments: map[string]any{"duration": 0.4, "steps": 2}}
	params.SetProgressToken("mine")
	if _, err := cs.CallTool(ctx, params); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		if p := next(t, progress, "progress"); p.ProgressToken != "mine" || p.Progress != float64(i) {
			t.Fatalf("progress %d: %+v", i, p)
		}
	}

	// Cancellation: the caller gives up after the first step of a long
	// operation; the call ends, and its audit row says so.
	cctx, cancel := context.WithCancel(ctx)
	params = &mcp.CallToolParams{Name: "ev.trigger-long-running-operation", Arguments: map[string]any{"duration": 60, "steps": 60}}
	params.SetProgressToken("long")
	ended := make(chan error, 1)
	go func() { _, err := cs.CallTool(cctx, params); ended <- err }()
	next(t, progress, "the long operation's first step")
	cancel()
	if err := next(t, ended, "the cancelled call to end"); err == nil {
		t.Fatal("the cancelled call succeeded")
	}

	// Log messages, at the level the caller set.
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
		t.Fatal(err)
	}
	if _, err := callText(cs, "ev.toggle-simulated-logging", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	if l := next(t, logs, "a log message"); !strings.Contains(fmt.Sprint(l.Data), "message") {
		t.Fatalf("log message: %+v", l)
	}

	// Resource updates, under the URI the caller subscribed to.
	sub := "mastio-ev+demo://resource/dynamic/text/3"
	if err := cs.Subscribe(ctx, &mcp.SubscribeParams{URI: sub}); err != nil {
		t.Fatal(err)
	}
	if _, err := callText(cs, "ev.toggle-subscriber-updates", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	if uri := next(t, updates, "a resource update"); uri != sub {
		t.Fatalf("resource update for %s, want %s", uri, sub)
	}

	// Stopping waits for calls in flight: every row is written.
	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	q, err := db.Query(`SELECT json_extract(details, '$.action'), json_extract(details, '$.name'), json_extract(details, '$.outcome')
		FROM audit_events WHERE event_type = 'mcp.call' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var rows []string
	for q.Next() {
		var action, name, outcome string
		q.Scan(&action, &name, &outcome)
		rows = append(rows, action+" "+name+" "+outcome)
	}
	for _, want := range []string{
		"prompts/get completable-prompt ok", "completion/complete completable-prompt ok",
		"resources/read demo://resource/static/document/features.md ok", "resources/read demo://resource/dynamic/text/3 ok",
		"tools/call echo denied", "prompts/get simple-prompt denied",
		"resources/read demo://resource/static/document/architecture.md denied", "resources/read demo://resource/dynamic/blob/1 denied",
		"tools/call trigger-long-running-operation ok", "tools/call trigger-long-running-operation cancelled",
	} {
		if !slices.Contains(rows, want) {
			t.Errorf("no audit row %q in %v", want, rows)
		}
	}
}

// next returns the next value from ch, failing if none comes within 20 s.
func next[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s within 20 s", what)
		panic("unreachable")
	}
}
