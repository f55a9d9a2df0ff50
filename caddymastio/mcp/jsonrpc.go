// Package mcp inspects Model Context Protocol traffic (JSON-RPC 2.0 over
// Streamable HTTP): it parses request bodies (single messages or batches),
// names the item each call uses, filters list results and reads and
// writes server-sent event streams.
package mcp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// JSON-RPC error codes used by the gateway.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603
	// CodeForbidden: the policy does not allow this agent this item. It is
	// the original Mastio's "not authorized" code; -32003 and -32004 must
	// be avoided: MCP SDKs read them as "client/server is closing".
	CodeForbidden = -32000
	// CodeRateLimited: the agent or tool is over its rate limit.
	CodeRateLimited = -32029
	// CodeUpstream: the upstream MCP server failed or is unreachable.
	CodeUpstream = -32001
	// CodeHeaderMismatch: Mcp-Method/Mcp-Name disagree with the body
	// (MCP 2026-07-28).
	CodeHeaderMismatch = -32020
)

// Message is one JSON-RPC message.
type Message struct {
	Raw     json.RawMessage `json:"-"`
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   json.RawMessage `json:"error,omitempty"`
}

// IsRequest reports a request (a method and an id).
func (m *Message) IsRequest() bool { return m.Method != "" && len(m.ID) > 0 && string(m.ID) != "null" }

// IsResponse reports a response (an id and a result or error).
func (m *Message) IsResponse() bool { return m.Method == "" && (m.Result != nil || m.Error != nil) }

// Key returns the id in a form usable as a map key.
func (m *Message) Key() string { return string(bytes.TrimSpace(m.ID)) }

// Error is a JSON-RPC error object.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("JSON-RPC error %d: %s", e.Code, e.Message) }

// ErrorResponse encodes a JSON-RPC error response for id (nil → null).
func ErrorResponse(id json.RawMessage, e *Error) json.RawMessage {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	b, _ := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   *Error          `json:"error"`
	}{"2.0", id, e})
	return b
}

// ParseBody reads a POST body: one message or a batch (array) of them.
// Every message must be a JSON object with jsonrpc "2.0"; requests and
// notifications need a string method.
func ParseBody(body []byte) ([]*Message, bool, *Error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, false, &Error{Code: CodeInvalidRequest, Message: "Invalid Request: empty body"}
	}
	batch := body[0] == '['
	var raws []json.RawMessage
	if batch {
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, true, &Error{Code: CodeParseError, Message: "Parse error: " + err.Error()}
		}
		if len(raws) == 0 {
			return nil, true, &Error{Code: CodeInvalidRequest, Message: "Invalid Request: empty batch"}
		}
	} else {
		if !json.Valid(body) {
			return nil, false, &Error{Code: CodeParseError, Message: "Parse error: the body is not valid JSON"}
		}
		raws = []json.RawMessage{body}
	}
	msgs := make([]*Message, 0, len(raws))
	for i, raw := range raws {
		m := &Message{Raw: raw}
		if err := json.Unmarshal(raw, m); err != nil {
			return nil, batch, &Error{Code: CodeInvalidRequest, Message: fmt.Sprintf("Invalid Request: message %d: %v", i, err)}
		}
		if m.JSONRPC != "2.0" {
			return nil, batch, &Error{Code: CodeInvalidRequest, Message: fmt.Sprintf("Invalid Request: message %d: jsonrpc must be \"2.0\"", i)}
		}
		if m.Method == "" && !m.IsResponse() {
			return nil, batch, &Error{Code: CodeInvalidRequest, Message: fmt.Sprintf("Invalid Request: message %d has no method", i)}
		}
		msgs = append(msgs, m)
	}
	return msgs, batch, nil
}

// Target returns the policy action and the item name a request uses:
// tools/call and prompts/get name a tool or prompt, resources/read a URI.
// ok is false for methods that name no item.
func Target(m *Message) (action, name string, ok bool, err error) {
	var key string
	switch m.Method {
	case "tools/call", "prompts/get":
		key = "name"
	case "resources/read":
		key = "uri"
	default:
		return "", "", false, nil
	}
	var p map[string]json.RawMessage
	if err := json.Unmarshal(m.Params, &p); err != nil {
		return m.Method, "", true, fmt.Errorf("params must be an object with %q", key)
	}
	if err := json.Unmarshal(p[key], &name); err != nil || name == "" {
		return m.Method, "", true, fmt.Errorf("params.%s must be a non-empty string", key)
	}
	return m.Method, name, true, nil
}

// Arguments returns params.arguments of a tools/call (or nil).
func Arguments(m *Message) json.RawMessage {
	var p struct {
		Arguments json.RawMessage `json:"arguments"`
	}
	json.Unmarshal(m.Params, &p)
	return p.Arguments
}

// ListKind describes a list method whose results the gateway filters.
type ListKind struct {
	Method  string // tools/list ...
	Items   string // result member holding the array
	NameKey string // member of an item that names it
	Action  string // the action using an item (for policy)
}

var lists = map[string]ListKind{
	"tools/list":               {"tools/list", "tools", "name", "tools/call"},
	"prompts/list":             {"prompts/list", "prompts", "name", "prompts/get"},
	"resources/list":           {"resources/list", "resources", "uri", "resources/read"},
	"resources/templates/list": {"resources/templates/list", "resourceTemplates", "uriTemplate", "resources/read"},
}

// List returns the ListKind of a list method.
func List(method string) (ListKind, bool) {
	k, ok := lists[method]
	return k, ok
}

// FilterResult removes the items of a list result that keep rejects and
// leaves every other member (nextCursor, _meta, ...) as it was.
func FilterResult(result json.RawMessage, k ListKind, keep func(name string) bool) (json.RawMessage, int, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(result, &obj); err != nil {
		return nil, 0, fmt.Errorf("%s result is not an object", k.Method)
	}
	raw, ok := obj[k.Items]
	if !ok {
		return result, 0, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(raw, &items); err != nil {
		return nil, 0, fmt.Errorf("%s result.%s is not an array", k.Method, k.Items)
	}
	kept := make([]json.RawMessage, 0, len(items))
	for _, it := range items {
		var named map[string]json.RawMessage
		var name string
		if json.Unmarshal(it, &named) == nil && json.Unmarshal(named[k.NameKey], &name) == nil && keep(name) {
			kept = append(kept, it)
		}
	}
	if len(kept) == len(items) {
		return result, 0, nil
	}
	newItems, _ := json.Marshal(kept)
	obj[k.Items] = newItems
	out, err := json.Marshal(obj)
	return out, len(items) - len(kept), err
}

// WithResult returns a response message with its result replaced.
func WithResult(m *Message, result json.RawMessage) json.RawMessage {
	var obj map[string]json.RawMessage
	json.Unmarshal(m.Raw, &obj)
	obj["result"] = result
	b, _ := json.Marshal(obj)
	return b
}

// DecodeHeaderValue decodes an Mcp-Name header value, which uses
// =?base64?<b64>?= for values that are not plain ASCII.
func DecodeHeaderValue(v string) (string, error) {
	if strings.HasPrefix(v, "=?base64?") && strings.HasSuffix(v, "?=") {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(strings.TrimPrefix(v, "=?base64?"), "?="))
		if err != nil {
			return "", errors.New("bad base64 sentinel")
		}
		return string(b), nil
	}
	return v, nil
}
