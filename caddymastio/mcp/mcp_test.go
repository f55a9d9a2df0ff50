package mcp

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseBody(t *testing.T) {
	msgs, batch, err := ParseBody([]byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","arguments":{"city":"Rome"}}}`))
	if err != nil || batch || len(msgs) != 1 || !msgs[0].IsRequest() {
		t.Fatalf("%v %v %v", msgs, batch, err)
	}
	action, name, ok, perr := Target(msgs[0])
	if action != "tools/call" || name != "get_forecast" || !ok || perr != nil {
		t.Fatalf("%s %s %v %v", action, name, ok, perr)
	}
	if string(Arguments(msgs[0])) != `{"city":"Rome"}` {
		t.Fatal(string(Arguments(msgs[0])))
	}
	msgs, batch, err = ParseBody([]byte(`[{"jsonrpc":"2.0","id":"a","method":"tools/list"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":3,"result":{}}]`))
	if err != nil || !batch || len(msgs) != 3 || !msgs[0].IsRequest() || msgs[1].IsRequest() || !msgs[2].IsResponse() {
		t.Fatalf("batch: %v %v", batch, err)
	}
	for body, code := range map[string]int{
		``:                                     CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":"x"`: CodeParseError,
		`[{"jsonrpc":"2.0","id":1,"method":"x"},`: CodeParseError,
		`[]`:                                    CodeInvalidRequest,
		`{"id":1,"method":"x"}`:                 CodeInvalidRequest,
		`{"jsonrpc":"1.0","id":1,"method":"x"}`: CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1}`:              CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":7}`:   CodeInvalidRequest,
		`[1,2]`:                                 CodeInvalidRequest,
		`"hello"`:                               CodeInvalidRequest,
	} {
		if _, _, err := ParseBody([]byte(body)); err == nil || err.Code != code {
			t.Errorf("%q: got %v, want code %d", body, err, code)
		}
	}
	m := &Message{Method: "tools/call", Params: json.RawMessage(`{"name":7}`)}
	if _, _, ok, err := Target(m); !ok || err == nil {
		t.Error("a non-string tool name was accepted")
	}
	m = &Message{Method: "resources/read", Params: json.RawMessage(`{"uri":"file:///a"}`)}
	if a, n, _, _ := Target(m); a != "resources/read" || n != "file:///a" {
		t.Error(a, n)
	}
}

func TestFilterKeepsPagination(t *testing.T) {
	res := json.RawMessage(`{"tools":[{"name":"a","inputSchema":{}},{"name":"b"},{"name":"c"}],"nextCursor":"page2","_meta":{"x":1}}`)
	k, _ := List("tools/list")
	out, removed, err := FilterResult(res, k, func(n string) bool { return n != "b" })
	if err != nil || removed != 1 {
		t.Fatal(err, removed)
	}
	var got map[string]any
	json.Unmarshal(out, &got)
	tools := got["tools"].([]any)
	if len(tools) != 2 || got["nextCursor"] != "page2" || got["_meta"] == nil {
		t.Fatalf("%s", out)
	}
	out, removed, _ = FilterResult(res, k, func(string) bool { return true })
	if removed != 0 || string(out) != string(res) {
		t.Fatal("an unfiltered result was rewritten")
	}
	out, _, _ = FilterResult(res, k, func(string) bool { return false })
	if !strings.Contains(string(out), `"tools":[]`) {
		t.Fatalf("all filtered: %s", out)
	}
	if _, _, err := FilterResult(json.RawMessage(`{"tools":"x"}`), k, func(string) bool { return true }); err == nil {
		t.Fatal("a malformed list passed")
	}
}

func TestSSEReader(t *testing.T) {
	stream := "event: message\nid: 1\ndata: {\"a\":\ndata: 1}\n\n: keepalive\n\ndata: {\"b\":2}\r\n\r\ndata: partial"
	var r EventReader
	var evs []Event
	for _, chunk := range []string{stream[:10], stream[10:33], stream[33:]} {
		evs = append(evs, r.Feed([]byte(chunk))...)
	}
	if len(evs) != 3 || string(evs[0].Data) != "{\"a\":\n1}" || evs[0].ID != "1" || evs[0].Event != "message" ||
		len(evs[1].Comments) != 1 || string(evs[2].Data) != `{"b":2}` || !r.Pending() {
		t.Fatalf("%+v", evs)
	}
	again := (&EventReader{}).Feed(evs[0].Bytes())
	if len(again) != 1 || string(again[0].Data) != string(evs[0].Data) || again[0].ID != "1" {
		t.Fatal("event does not round-trip")
	}
}

func TestHeaderValueDecoding(t *testing.T) {
	if v, _ := DecodeHeaderValue("=?base64?d2V0dGVy?="); v != "wetter" {
		t.Fatal(v)
	}
	if v, _ := DecodeHeaderValue("plain_tool"); v != "plain_tool" {
		t.Fatal(v)
	}
	if _, err := DecodeHeaderValue("=?base64?!!?="); err == nil {
		t.Fatal("bad base64 accepted")
	}
}

func FuzzParseBody(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`))
	f.Add([]byte(`[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, _, err := ParseBody(b)
		if err == nil {
			for _, m := range msgs {
				Target(m)
			}
		}
	})
}
