package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// Bridge connects a stock MCP client, which knows neither mTLS nor DPoP,
// to the Mastio: it relays the client's messages — over stdio
// (ServeStdio) or Streamable HTTP on loopback (Handler) — to an MCP
// endpoint of the Mastio with the agent's credentials (its client
// certificate, an access token it renews, a fresh DPoP proof per request
// with the server's nonce).
//
// Refusals of the Mastio reach the client as JSON-RPC errors naming the
// reason. Once the Mastio refuses the agent itself (revoked, or its
// certificate rotated out), the bridge stops: every later request gets
// that error without being sent.
type Bridge struct {
	// Session carries the agent's credentials.
	Session *Session
	// Target is the MCP endpoint: the aggregator
	// (https://mastio.example.com:9443/v1/mcp) or a gateway route.
	Target string
	// Logf, if set, receives the bridge's own notes (never credentials).
	Logf func(format string, args ...any)

	mu      sync.Mutex
	refused *mcp.Error // the Mastio refused the agent for good
}

// CodeRefused is the JSON-RPC error code of the Mastio's refusals as the
// bridge reports them (the gateway's own "not allowed" code).
const CodeRefused = mcp.CodeForbidden

// maxMessageBytes bounds one message from the client.
const maxMessageBytes = 16 << 20

func (b *Bridge) logf(format string, args ...any) {
	if b.Logf != nil {
		b.Logf(format, args...)
	}
}

// finalRefusal is the error every request gets once the agent was refused
// for good, or nil.
func (b *Bridge) finalRefusal() *mcp.Error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}

// forwarded headers: what a Streamable HTTP client sends that the Mastio
// and the MCP server behind it read.
var forwarded = []string{"Content-Type", "Accept", "Mcp-Session-Id", "Mcp-Protocol-Version", "Mcp-Method", "Mcp-Name", "Last-Event-Id"}

// send sends one request to the Target with the agent's credentials. A
// failure to obtain credentials is a refusal (see refusal).
func (b *Bridge) send(ctx context.Context, method string, body []byte, hdr http.Header) (*http.Response, *mcp.Error) {
	if e := b.finalRefusal(); e != nil {
		return nil, e
	}
	req, err := http.NewRequestWithContext(ctx, method, b.Target, bytes.NewReader(body))
	if err != nil {
		return nil, &mcp.Error{Code: mcp.CodeInternal, Message: err.Error()}
	}
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	for _, h := range forwarded {
		if v := hdr.Values(h); len(v) > 0 {
			req.Header[http.CanonicalHeaderKey(h)] = v
		}
	}
	resp, err := b.Session.RoundTrip(req)
	if err != nil {
		var api *APIError
		if errors.As(err, &api) { // the token request was refused
			return nil, b.refusal(api.Status, []byte(api.Body))
		}
		return nil, &mcp.Error{Code: mcp.CodeUpstream, Message: "the Mastio cannot be reached: " + err.Error()}
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if _, _, perr := mcp.ParseBody(data); perr == nil {
			// A JSON-RPC answer (a gateway decision): the client reads it.
			resp.Body = io.NopCloser(bytes.NewReader(data))
			return resp, nil
		}
		return nil, b.refusal(resp.StatusCode, data)
	}
	return resp, nil
}

// refusal turns a refusal of the Mastio (its JSON error body) into the
// JSON-RPC error the client gets. A refusal of the agent itself — revoked,
// or its certificate no longer pinned — is final.
func (b *Bridge) refusal(status int, body []byte) *mcp.Error {
	var r struct {
		Error       string `json:"error"`
		Message     string `json:"message"`
		Description string `json:"error_description"`
		Reason      string `json:"reason"`
		Hint        string `json:"hint"`
	}
	json.Unmarshal(body, &r)
	reason := r.Reason
	if reason == "" {
		reason = r.Error
	}
	msg := r.Message
	if msg == "" {
		msg = r.Description
	}
	if msg == "" {
		msg = fmt.Sprintf("HTTP %d", status)
	}
	e := &mcp.Error{Code: CodeRefused, Message: "the Mastio refused the request: " + msg + " (" + reason + ")"}
	if r.Hint != "" {
		e.Message += "; " + r.Hint
	}
	switch reason {
	case "agent_revoked", "client_cert_pin_mismatch", "client_cert_untrusted":
		b.mu.Lock()
		if b.refused == nil {
			b.refused = e
			b.logf("the Mastio refused this agent (%s): no further request is sent", reason)
		}
		b.mu.Unlock()
	}
	return e
}

// answerErrors answers every request in body with e (nothing for
// notifications and responses).
func answerErrors(body []byte, e *mcp.Error) []json.RawMessage {
	msgs, _, perr := mcp.ParseBody(body)
	if perr != nil {
		return []json.RawMessage{mcp.ErrorResponse(nil, perr)}
	}
	var out []json.RawMessage
	for _, m := range msgs {
		if m.IsRequest() {
			out = append(out, mcp.ErrorResponse(m.ID, e))
		}
	}
	return out
}

// isEventStream reports an SSE answer.
func isEventStream(resp *http.Response) bool {
	return strings.HasPrefix(strings.ToLower(resp.Header.Get("Content-Type")), "text/event-stream")
}
