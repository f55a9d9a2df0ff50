package mcp

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
)

// FuzzParseBody checks the gateway's reading of a message against the
// official MCP Go SDK's (jsonrpc.DecodeMessage): whenever the gateway
// accepts a message, the SDK reading the bytes as received and the SDK
// reading what the gateway forwards (Encode) both see the method, id and
// item the gateway decided on.
func FuzzParseBody(f *testing.F) {
	for _, seed := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1}}}`,
		`[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]`,
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","Method":"tools/list","params":{"name":"secret"}}`,
		`{"jsonrpc":"2.0","id":4,"method":"tools/list","\u004dethod":"tools/call"}`,
		`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ok"},"params":{"name":"secret"}}`,
		`{"jsonrpc":"2.0","id":"a\u0042","method":"resources/read","params":{"uri":"file:///x"}}`,
		`{"jsonrpc":"2.0","id":7,"result":{"tools":[]}}`,
		`{"jsonrpc":"2.0","id":7,"error":{"code":-32000,"message":"no"}}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":-0,"method":"prompts/get","params":{"name":"p","arguments":{}}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, batch, perr := ParseBody(b)
		if perr != nil {
			return
		}
		for _, m := range msgs {
			_, name, named, terr := Target(m)
			sameReading(t, "forwarded", m, m.Encode(), name, named && terr == nil)
		}
		if !batch {
			_, name, named, terr := Target(msgs[0])
			sameReading(t, "received", msgs[0], b, name, named && terr == nil)
		}
	})
}

// sameReading fails unless the SDK reads data as the gateway read m.
func sameReading(t *testing.T, what string, m *Message, data []byte, name string, named bool) {
	t.Helper()
	decoded, err := jsonrpc.DecodeMessage(data)
	if err != nil {
		if m.IsResponse() && m.Error != nil {
			return // an error object the SDK cannot type: it never reaches a policy decision
		}
		t.Fatalf("%s: the gateway accepted %q, the SDK refused it: %v", what, data, err)
	}
	switch d := decoded.(type) {
	case *jsonrpc.Request:
		if d.Method != m.Method {
			t.Fatalf("%s: method %q, the SDK read %q in %q", what, m.Method, d.Method, data)
		}
		if m.ID != nil {
			raw := marshalPlain(d.ID.Raw())
			if !d.ID.IsValid() || string(raw) != string(m.ID) {
				t.Fatalf("%s: id %s, the SDK read %s in %q", what, m.ID, raw, data)
			}
		} else if d.ID.IsValid() {
			t.Fatalf("%s: a notification, the SDK read id %v in %q", what, d.ID.Raw(), data)
		}
		if named {
			var params map[string]json.RawMessage
			var sdkName string
			key := "name"
			if m.Method == "resources/read" {
				key = "uri"
			}
			if json.Unmarshal(d.Params, &params) != nil || json.Unmarshal(params[key], &sdkName) != nil || sdkName != name {
				t.Fatalf("%s: item %q, the SDK's params name %q in %q", what, name, sdkName, data)
			}
		}
	case *jsonrpc.Response:
		if !m.IsResponse() {
			t.Fatalf("%s: a request, the SDK read a response in %q", what, data)
		}
	}
}

// marshalPlain encodes v as JSON without escaping &, < and > (as the
// gateway's canonical ids are written), so that the same id compares
// equal.
func marshalPlain(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
