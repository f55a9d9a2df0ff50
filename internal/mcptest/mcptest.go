// Package mcptest runs a real MCP server for tests: the official Go SDK's,
// over Streamable HTTP on loopback.
package mcptest

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// Weather serves the tools get_forecast and set_alert ({"city"}),
// delete_everything (dangerous) and slow (answers after 3 s, or when the
// call is cancelled); with jsonResponses it answers application/json,
// else text/event-stream. It is closed when the test ends.
func Weather(t testing.TB, jsonResponses bool) *httptest.Server {
	server := mcpsdk.NewServer(&mcpsdk.Implementation{Name: "weather", Version: "1.0.0"}, nil)
	type cityIn struct {
		City string `json:"city"`
	}
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "get_forecast", Description: "Forecast for a city"},
		func(ctx context.Context, req *mcpsdk.CallToolRequest, in cityIn) (*mcpsdk.CallToolResult, any, error) {
			return Text("sunny in " + in.City), nil, nil
		})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "set_alert", Description: "Set an alert"},
		func(ctx context.Context, req *mcpsdk.CallToolRequest, in cityIn) (*mcpsdk.CallToolResult, any, error) {
			return Text("alert set for " + in.City), nil, nil
		})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "delete_everything", Description: "Dangerous"},
		func(ctx context.Context, req *mcpsdk.CallToolRequest, in struct{}) (*mcpsdk.CallToolResult, any, error) {
			return Text("everything deleted"), nil, nil
		})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "slow", Description: "Takes 3 seconds"},
		func(ctx context.Context, req *mcpsdk.CallToolRequest, in struct{}) (*mcpsdk.CallToolResult, any, error) {
			select {
			case <-time.After(3 * time.Second):
			case <-ctx.Done():
			}
			return Text("done"), nil, nil
		})
	h := mcpsdk.NewStreamableHTTPHandler(func(*http.Request) *mcpsdk.Server { return server },
		&mcpsdk.StreamableHTTPOptions{JSONResponse: jsonResponses})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// Text is a tool result of one text.
func Text(s string) *mcpsdk.CallToolResult {
	return &mcpsdk.CallToolResult{Content: []mcpsdk.Content{&mcpsdk.TextContent{Text: s}}}
}

// TextOf is the first text of a tool result, or "".
func TextOf(res *mcpsdk.CallToolResult) string {
	if res == nil || len(res.Content) == 0 {
		return ""
	}
	if tc, ok := res.Content[0].(*mcpsdk.TextContent); ok {
		return tc.Text
	}
	return ""
}

// Everything serves one of each MCP feature, for the aggregator's tests:
//   - tools get_forecast ({"city"}), delete_everything, count (reports
//     progress 1 and 2 of 2 when asked for progress), ask (asks the client
//     for a sampled message and returns its text), confirm (elicits an
//     "answer", yes or no, and returns "<action>: <answer>") and note (logs
//     "noted" at info level);
//   - prompts greeting ({"name"}, with completion of name) and secret;
//   - resources weather://stations and weather://secret, and the template
//     weather://city/{name}.
//
// It answers text/event-stream, keeps sessions, and is closed when the
// test ends.
func Everything(t testing.TB) *httptest.Server {
	server := mcpsdk.NewServer(&mcpsdk.Implementation{Name: "everything", Version: "1.0.0"}, &mcpsdk.ServerOptions{
		CompletionHandler: func(ctx context.Context, req *mcpsdk.CompleteRequest) (*mcpsdk.CompleteResult, error) {
			return &mcpsdk.CompleteResult{Completion: mcpsdk.CompletionResultDetails{Values: []string{"Ada", "Alan"}}}, nil
		},
	})
	type cityIn struct {
		City string `json:"city"`
	}
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "get_forecast"}, func(ctx context.Context, req *mcpsdk.CallToolRequest, in cityIn) (*mcpsdk.CallToolResult, any, error) {
		return Text("sunny in " + in.City), nil, nil
	})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "delete_everything"}, func(context.Context, *mcpsdk.CallToolRequest, struct{}) (*mcpsdk.CallToolResult, any, error) {
		return Text("everything deleted"), nil, nil
	})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "count"}, func(ctx context.Context, req *mcpsdk.CallToolRequest, _ struct{}) (*mcpsdk.CallToolResult, any, error) {
		if tok := req.Params.GetProgressToken(); tok != nil {
			for i := 1; i <= 2; i++ {
				req.Session.NotifyProgress(ctx, &mcpsdk.ProgressNotificationParams{ProgressToken: tok, Progress: float64(i), Total: 2})
			}
		}
		return Text("counted"), nil, nil
	})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "ask"}, func(ctx context.Context, req *mcpsdk.CallToolRequest, _ struct{}) (*mcpsdk.CallToolResult, any, error) {
		res, err := req.Session.CreateMessage(ctx, &mcpsdk.CreateMessageParams{MaxTokens: 10,
			Messages: []*mcpsdk.SamplingMessage{{Role: "user", Content: &mcpsdk.TextContent{Text: "say something"}}}})
		if err != nil {
			return nil, nil, err
		}
		tc, _ := res.Content.(*mcpsdk.TextContent)
		if tc == nil {
			return Text(""), nil, nil
		}
		return Text("the client said: " + tc.Text), nil, nil
	})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "confirm"}, func(ctx context.Context, req *mcpsdk.CallToolRequest, _ struct{}) (*mcpsdk.CallToolResult, any, error) {
		res, err := req.Session.Elicit(ctx, &mcpsdk.ElicitParams{Message: "sure?", RequestedSchema: map[string]any{
			"type": "object",
			"properties": map[string]any{
				"answer": map[string]any{"type": "string", "enum": []string{"yes", "no"}, "enumNames": []string{"Yes", "No"}},
			},
		}})
		if err != nil {
			return nil, nil, err
		}
		return Text(fmt.Sprintf("%s: %v", res.Action, res.Content["answer"])), nil, nil
	})
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "note"}, func(ctx context.Context, req *mcpsdk.CallToolRequest, _ struct{}) (*mcpsdk.CallToolResult, any, error) {
		req.Session.Log(ctx, &mcpsdk.LoggingMessageParams{Level: "info", Data: "noted"})
		return Text("logged"), nil, nil
	})
	server.AddPrompt(&mcpsdk.Prompt{Name: "greeting", Arguments: []*mcpsdk.PromptArgument{{Name: "name"}}},
		func(ctx context.Context, req *mcpsdk.GetPromptRequest) (*mcpsdk.GetPromptResult, error) {
			return &mcpsdk.GetPromptResult{Messages: []*mcpsdk.PromptMessage{{Role: "user",
				Content: &mcpsdk.TextContent{Text: "Hello, " + req.Params.Arguments["name"]}}}}, nil
		})
	server.AddPrompt(&mcpsdk.Prompt{Name: "secret"}, func(context.Context, *mcpsdk.GetPromptRequest) (*mcpsdk.GetPromptResult, error) {
		return &mcpsdk.GetPromptResult{Messages: []*mcpsdk.PromptMessage{{Role: "user", Content: &mcpsdk.TextContent{Text: "the secret"}}}}, nil
	})
	read := func(text string) mcpsdk.ResourceHandler {
		return func(ctx context.Context, req *mcpsdk.ReadResourceRequest) (*mcpsdk.ReadResourceResult, error) {
			return &mcpsdk.ReadResourceResult{Contents: []*mcpsdk.ResourceContents{{URI: req.Params.URI, MIMEType: "text/plain",
				Text: text + " " + req.Params.URI}}}, nil
		}
	}
	server.AddResource(&mcpsdk.Resource{URI: "weather://stations", Name: "stations"}, read("stations at"))
	server.AddResource(&mcpsdk.Resource{URI: "weather://secret", Name: "secret"}, read("secret at"))
	server.AddResourceTemplate(&mcpsdk.ResourceTemplate{URITemplate: "weather://city/{name}", Name: "city"}, read("the city at"))
	srv := httptest.NewServer(mcpsdk.NewStreamableHTTPHandler(func(*http.Request) *mcpsdk.Server { return server }, nil))
	t.Cleanup(srv.Close)
	return srv
}
