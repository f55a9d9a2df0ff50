// Package mcp inspects Model Context Protocol traffic (JSON-RPC 2.0 over
// Streamable HTTP): it reads messages strictly (single messages or
// batches), names the item each call uses, filters list results, and
// reads and writes server-sent event streams.
//
// A gateway must decide on exactly what the server behind it will
// execute. Every message is therefore read with case-sensitive member
// names; a message whose member names repeat anywhere, that is not valid
// UTF-8, or whose protocol members (jsonrpc, id, method, params, result,
// error; name, uri, arguments in params) appear in another letter case is
// refused; and what is forwarded is the message re-encoded from what was
// read (see Message.Encode), never the bytes as received.
package mcp

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// JSON-RPC error codes used by the gateway: the protocol's own, as the
// official MCP Go SDK defines them, and the gateway's.
const (
	CodeParseError     = jsonrpc.CodeParseError
	CodeInvalidRequest = jsonrpc.CodeInvalidRequest
	CodeMethodNotFound = jsonrpc.CodeMethodNotFound
	CodeInvalidParams  = jsonrpc.CodeInvalidParams
	CodeInternal       = jsonrpc.CodeInternalError
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
	CodeHeaderMismatch = mcpsdk.CodeHeaderMismatch
)

// Message is one JSON-RPC message as the gateway read it.
type Message struct {
	// ID in canonical form: a JSON string or an integer, or nil when the
	// message has none (a notification). A response may carry "null".
	ID json.RawMessage
	// Method of a request or notification; empty for a response.
	Method string
	// Params, Result and Error as received (already checked to be valid
	// UTF-8 with unique member names throughout); nil when absent.
	Params json.RawMessage
	Result json.RawMessage
	Error  json.RawMessage

	// The members of an object params that name an item, as received.
	paramName, paramURI, arguments jsontext.Value
}

// IsRequest reports a request (a method and an id).
func (m *Message) IsRequest() bool { return m.Method != "" && m.ID != nil }

// IsNotification reports a notification (a method, no id).
func (m *Message) IsNotification() bool { return m.Method != "" && m.ID == nil }

// IsResponse reports a response (an id and a result or error).
func (m *Message) IsResponse() bool { return m.Method == "" }

// Key returns the id in a form usable as a map key.
func (m *Message) Key() string { return string(m.ID) }

// Encode returns the message as the gateway forwards it: only the members
// it read, in canonical form.
func (m *Message) Encode() json.RawMessage {
	b := make([]byte, 0, 32+len(m.Method)+len(m.ID)+len(m.Params)+len(m.Result)+len(m.Error))
	b = append(b, `{"jsonrpc":"2.0"`...)
	if m.ID != nil {
		b = append(b, `,"id":`...)
		b = append(b, m.ID...)
	}
	if m.Method != "" {
		b = append(b, `,"method":`...)
		b, _ = jsontext.AppendQuote(b, m.Method) // valid UTF-8: it was read from valid JSON
	}
	for _, member := range []struct {
		name string
		raw  json.RawMessage
	}{{"params", m.Params}, {"result", m.Result}, {"error", m.Error}} {
		if member.raw != nil {
			b = append(b, `,"`...)
			b = append(b, member.name...)
			b = append(b, `":`...)
			b = append(b, member.raw...)
		}
	}
	return append(b, '}')
}

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

// Result encodes a JSON-RPC success response carrying v.
func Result(id json.RawMessage, v any) json.RawMessage {
	b, _ := json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  any             `json:"result"`
	}{"2.0", id, v})
	return b
}

// Members a message may carry, and those of params that name an item: a
// member spelled like one of these in another case is refused, because a
// server matching names case-insensitively would read it as that member.
var (
	messageMembers = []string{"jsonrpc", "id", "method", "params", "result", "error"}
	paramsMembers  = []string{"name", "uri", "arguments"}
)

// TrimSpace removes JSON's whitespace around b (bytes.TrimSpace would also
// take a vertical tab or a Unicode space, which JSON readers refuse).
func TrimSpace(b []byte) []byte { return bytes.Trim(b, " \t\r\n") }

// ParseBody reads a body: one message or a batch (array) of them. Every
// message must be a JSON object with jsonrpc "2.0" that is exactly one of
// a request, a notification or a response.
func ParseBody(body []byte) ([]*Message, bool, *Error) {
	body = TrimSpace(body)
	if len(body) == 0 {
		return nil, false, &Error{Code: CodeInvalidRequest, Message: "Invalid Request: empty body"}
	}
	dec := jsontext.NewDecoder(bytes.NewReader(body))
	batch := body[0] == '['
	var msgs []*Message
	if batch {
		if _, err := dec.ReadToken(); err != nil {
			return nil, true, syntaxError(err)
		}
		for i := 0; dec.PeekKind() != ']'; i++ {
			m, perr := readMessage(dec, body, i)
			if perr != nil {
				return nil, true, perr
			}
			msgs = append(msgs, m)
		}
		if _, err := dec.ReadToken(); err != nil {
			return nil, true, syntaxError(err)
		}
		if len(msgs) == 0 {
			return nil, true, &Error{Code: CodeInvalidRequest, Message: "Invalid Request: empty batch"}
		}
	} else {
		m, perr := readMessage(dec, body, -1)
		if perr != nil {
			return nil, false, perr
		}
		msgs = []*Message{m}
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		return nil, batch, &Error{Code: CodeParseError, Message: "Parse error: unexpected data after the JSON value"}
	}
	return msgs, batch, nil
}

// ParseMessage reads exactly one message.
func ParseMessage(data []byte) (*Message, *Error) {
	msgs, batch, perr := ParseBody(data)
	if perr != nil {
		return nil, perr
	}
	if batch {
		return nil, &Error{Code: CodeInvalidRequest, Message: "Invalid Request: a batch where one message was expected"}
	}
	return msgs[0], nil
}

// syntaxError describes a jsontext error: malformed JSON is a parse error,
// a repeated member name an invalid request naming the member.
func syntaxError(err error) *Error {
	var se *jsontext.SyntacticError
	if errors.As(err, &se) {
		if errors.Is(se.Err, jsontext.ErrDuplicateName) {
			name := se.JSONPointer.LastToken()
			where := string(se.JSONPointer.Parent())
			if where == "" {
				where = "/"
			}
			return &Error{Code: CodeInvalidRequest, Message: fmt.Sprintf("Invalid Request: the member %q appears twice (in %s)", name, where)}
		}
		return &Error{Code: CodeParseError, Message: "Parse error: " + strings.TrimPrefix(se.Error(), "jsontext: ")}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &Error{Code: CodeParseError, Message: "Parse error: unexpected end of the body"}
	}
	return &Error{Code: CodeParseError, Message: "Parse error: " + err.Error()}
}

// readValue reads the next value from dec and returns it as a slice of
// input, the decoder's whole input (values the decoder returns are only
// valid until its next call).
func readValue(dec *jsontext.Decoder, input []byte) (jsontext.Value, error) {
	start := dec.InputOffset()
	if _, err := dec.ReadValue(); err != nil {
		return nil, err
	}
	return jsontext.Value(bytes.TrimLeft(input[start:dec.InputOffset()], " \t\r\n:,")), nil
}

// readMessage reads one message object from dec. body is the decoder's
// whole input, from which raw member values are sliced.
func readMessage(dec *jsontext.Decoder, body []byte, index int) (*Message, *Error) {
	where := ""
	if index >= 0 {
		where = fmt.Sprintf("message %d: ", index)
	}
	invalid := func(format string, args ...any) *Error {
		return &Error{Code: CodeInvalidRequest, Message: "Invalid Request: " + where + fmt.Sprintf(format, args...)}
	}
	if k := dec.PeekKind(); k != '{' {
		if k == 0 {
			_, err := dec.ReadToken()
			return nil, syntaxError(err)
		}
		v, err := dec.ReadValue()
		if err != nil {
			return nil, syntaxError(err)
		}
		return nil, invalid("a message must be a JSON object, not %s", kindName(v.Kind()))
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, syntaxError(err)
	}
	m := &Message{}
	var version, method, id jsontext.Value
	hasMethod := false
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, syntaxError(err)
		}
		name := tok.String()
		if known := foldMatch(name, messageMembers); known != "" && known != name {
			return nil, invalid("the member %q differs only in letter case from %q", name, known)
		}
		switch name {
		case "params":
			raw, perr := readParams(dec, body, m, invalid)
			if perr != nil {
				return nil, perr
			}
			m.Params = raw
			continue
		}
		v, err := readValue(dec, body)
		if err != nil {
			return nil, syntaxError(err)
		}
		switch name {
		case "jsonrpc":
			version = v
		case "id":
			id = v
		case "method":
			method, hasMethod = v, true
		case "result":
			m.Result = json.RawMessage(v)
		case "error":
			m.Error = json.RawMessage(v)
		}
		// Other members are not part of JSON-RPC: they are not forwarded.
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, syntaxError(err)
	}
	if string(version) != `"2.0"` {
		return nil, invalid(`jsonrpc must be "2.0"`)
	}
	if hasMethod {
		if method.Kind() != '"' {
			return nil, invalid("method must be a string")
		}
		var s string
		if err := json.Unmarshal(method, &s); err != nil || s == "" {
			return nil, invalid("method must be a non-empty string")
		}
		m.Method = s
	}
	if id != nil {
		canon, perr := canonicalID(id, hasMethod, invalid)
		if perr != nil {
			return nil, perr
		}
		m.ID = canon
	}
	switch {
	case hasMethod && (m.Result != nil || m.Error != nil):
		return nil, invalid("a message cannot have both a method and a result or error")
	case !hasMethod && m.ID == nil:
		return nil, invalid("a message needs a method (request, notification) or an id (response)")
	case !hasMethod && (m.Result == nil) == (m.Error == nil):
		return nil, invalid("a response needs exactly one of result and error")
	case !hasMethod && m.Params != nil:
		return nil, invalid("a response cannot have params")
	case m.Error != nil && m.Error[0] != '{':
		return nil, invalid("error must be an object")
	}
	return m, nil
}

// canonicalID checks an id: a string or an integer (as JSON-RPC asks:
// "Numbers SHOULD NOT contain fractional parts"; MCP: "string or
// integer"), re-encoded so that every reader sees the same value. A
// response may carry null (an error about an unreadable request).
func canonicalID(v jsontext.Value, request bool, invalid func(string, ...any) *Error) (json.RawMessage, *Error) {
	switch v.Kind() {
	case '"':
		var s string
		json.Unmarshal(v, &s)
		out, _ := jsontext.AppendQuote(nil, s)
		return out, nil
	case '0':
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil || n > 1<<53 || n < -(1<<53) {
			return nil, invalid("a numeric id must be an integer between -2^53 and 2^53")
		}
		return strconv.AppendInt(nil, n, 10), nil
	case 'n':
		if !request {
			return json.RawMessage("null"), nil
		}
	}
	return nil, invalid("id must be a string or an integer")
}

// readParams reads params, looking into an object's own members for those
// that name an item. It returns the raw value as received.
func readParams(dec *jsontext.Decoder, body []byte, m *Message, invalid func(string, ...any) *Error) (json.RawMessage, *Error) {
	start := dec.InputOffset()
	switch dec.PeekKind() {
	case '{':
	case '[':
		v, err := readValue(dec, body)
		if err != nil {
			return nil, syntaxError(err)
		}
		return json.RawMessage(v), nil
	case 'n':
		// "params": null is read as no params.
		if _, err := dec.ReadValue(); err != nil {
			return nil, syntaxError(err)
		}
		return nil, nil
	case 0:
		_, err := dec.ReadToken()
		return nil, syntaxError(err)
	default:
		return nil, invalid("params must be an object or an array")
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, syntaxError(err)
	}
	for dec.PeekKind() != '}' {
		tok, err := dec.ReadToken()
		if err != nil {
			return nil, syntaxError(err)
		}
		name := tok.String()
		if known := foldMatch(name, paramsMembers); known != "" && known != name {
			return nil, invalid("the member %q of params differs only in letter case from %q", name, known)
		}
		v, err := readValue(dec, body)
		if err != nil {
			return nil, syntaxError(err)
		}
		switch name {
		case "name":
			m.paramName = v
		case "uri":
			m.paramURI = v
		case "arguments":
			m.arguments = v
		}
	}
	if _, err := dec.ReadToken(); err != nil {
		return nil, syntaxError(err)
	}
	raw := bytes.TrimLeft(body[start:dec.InputOffset()], " \t\r\n:")
	return json.RawMessage(raw), nil
}

// foldMatch returns the member of known that name equals under Unicode
// case folding (so "Method", "METHOD" and "paramſ" match), or "".
func foldMatch(name string, known []string) string {
	for _, k := range known {
		if strings.EqualFold(name, k) {
			return k
		}
	}
	return ""
}

func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '[':
		return "an array"
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	}
	return "a " + k.String()
}

// Target returns the policy action and the item name a request uses:
// tools/call and prompts/get name a tool or prompt, resources/read a URI.
// ok is false for methods that name no item.
func Target(m *Message) (action, name string, ok bool, err error) {
	var key string
	var v jsontext.Value
	switch m.Method {
	case "tools/call", "prompts/get":
		key, v = "name", m.paramName
	case "resources/read":
		key, v = "uri", m.paramURI
	default:
		return "", "", false, nil
	}
	if len(m.Params) == 0 || m.Params[0] != '{' {
		return m.Method, "", true, fmt.Errorf("params must be an object with %q", key)
	}
	if v.Kind() != '"' || json.Unmarshal(v, &name) != nil || name == "" {
		return m.Method, "", true, fmt.Errorf("params.%s must be a non-empty string", key)
	}
	return m.Method, name, true, nil
}

// Arguments returns params.arguments as received (or nil).
func Arguments(m *Message) json.RawMessage {
	if m.arguments == nil {
		return nil
	}
	return json.RawMessage(m.arguments)
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

// EncodeHeaderValue encodes v for an Mcp-Name header: as it is when it is
// printable ASCII without surrounding spaces, else =?base64?<b64>?=.
func EncodeHeaderValue(v string) string {
	plain := v == strings.TrimSpace(v) && !strings.HasPrefix(v, "=?base64?")
	for i := 0; plain && i < len(v); i++ {
		plain = v[i] >= 0x20 && v[i] < 0x7f
	}
	if plain {
		return v
	}
	return "=?base64?" + base64.StdEncoding.EncodeToString([]byte(v)) + "?="
}
