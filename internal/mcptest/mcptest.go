// Package mcptest runs a real MCP server for tests: the official Go SDK's,
// over Streamable HTTP on loopback.
package mcptest

import (
	"context"
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
