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
	if err != nil || !batch || len(msgs) != 3 || !msgs[0].IsRequest() || !msgs[1].IsNotification() || !msgs[2].IsResponse() {
		t.Fatalf("batch: %v %v", batch, err)
	}
	for body, code := range map[string]int{
		``:                                     CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":"x"`: CodeParseError,
		`[{"jsonrpc":"2.0","id":1,"method":"x"},`:  CodeParseError,
		`{"jsonrpc":"2.0","id":1,"method":"x"} {}`: CodeParseError,
		`[]`:                                                CodeInvalidRequest,
		`{"id":1,"method":"x"}`:                             CodeInvalidRequest,
		`{"jsonrpc":"1.0","id":1,"method":"x"}`:             CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1}`:                          CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":7}`:               CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":""}`:              CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1.5,"method":"x"}`:           CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1e3,"method":"x"}`:           CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":null,"method":"x"}`:          CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":[1],"method":"x"}`:           CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":"x","result":{}}`: CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"result":{},"error":{}}`:   CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"error":"bad"}`:            CodeInvalidRequest,
		`{"jsonrpc":"2.0","id":1,"method":"x","params":3}`:  CodeInvalidRequest,
		`[1,2]`:   CodeInvalidRequest,
		`"hello"`: CodeInvalidRequest,
	} {
		if _, _, err := ParseBody([]byte(body)); err == nil || err.Code != code {
			t.Errorf("%q: got %v, want code %d", body, err, code)
		}
	}
	msgs, _, _ = ParseBody([]byte(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":7}}`))
	if _, _, ok, err := Target(msgs[0]); !ok || err == nil {
		t.Error("a non-string tool name was accepted")
	}
	msgs, _, _ = ParseBody([]byte(`{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}`))
	if a, n, _, _ := Target(msgs[0]); a != "resources/read" || n != "file:///a" {
		t.Error(a, n)
	}
}

// TestAmbiguousMessagesAreRefused: a message that readers could read in
// different ways (another letter case, a repeated member, an escape
// spelling a protocol member) is refused, in single messages and batches.
func TestAmbiguousMessagesAreRefused(t *testing.T) {
	for name, body := range map[string]string{
		"Method beside method":   `{"jsonrpc":"2.0","id":4,"method":"tools/call","Method":"tools/list","params":{"name":"secret"}}`,
		"escaped Method":         `{"jsonrpc":"2.0","id":4,"method":"tools/list","\u004dethod":"tools/call","params":{"name":"secret"}}`,
		"METHOD alone":           `{"jsonrpc":"2.0","id":4,"METHOD":"tools/call","params":{"name":"secret"}}`,
		"method twice":           `{"jsonrpc":"2.0","id":4,"method":"tools/list","method":"tools/call","params":{"name":"secret"}}`,
		"params twice":           `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ok"},"params":{"name":"secret"}}`,
		"name twice":             `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ok","name":"secret"}}`,
		"Name in params":         `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ok","Name":"secret"}}`,
		"escaped name in params": `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"\u006eame":"ok","name":"secret"}}`,
		"URI for resources":      `{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"a","URI":"b"}}`,
		"long s folds to s":      `{"jsonrpc":"2.0","id":4,"method":"tools/call","paramſ":{"name":"secret"}}`,
		"Arguments":              `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","arguments":{},"Arguments":{"a":1}}}`,
		"duplicate deep in args": `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"x","arguments":{"path":"/tmp","path":"/etc"}}}`,
		"ID beside id":           `{"jsonrpc":"2.0","id":4,"ID":5,"method":"tools/list"}`,
		"in a batch":             `[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":4,"method":"tools/list","Method":"tools/call"}]`,
		"invalid UTF-8":          "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"se\xffcret\"}}",
		"lone surrogate escape":  `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"\ud800secret"}}`,
		"vertical tab before":    "\v{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}",
		"form feed after":        "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}\f",
		"no-break space before":  "\u00a0{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}",
		"next line after":        "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/list\"}\u0085",
	} {
		if _, _, err := ParseBody([]byte(body)); err == nil {
			t.Errorf("%s: accepted %s", name, body)
		} else if err.Code != CodeInvalidRequest && err.Code != CodeParseError {
			t.Errorf("%s: code %d", name, err.Code)
		}
	}
	_, _, err := ParseBody([]byte(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"ok","name":"secret"}}`))
	if err.Code != CodeInvalidRequest || !strings.Contains(err.Message, `"name" appears twice`) {
		t.Errorf("a duplicate is not named: %v", err)
	}
}

// TestEncodeIsWhatWasRead: the forwarded form holds the members read, in
// canonical form, and nothing else.
func TestEncodeIsWhatWasRead(t *testing.T) {
	msgs, _, err := ParseBody([]byte(`{"extra":1,"params" : {"name":"get","arguments":{"a":[1, 2]}},"id":"x\u0041","method":"tools/call","jsonrpc":"2.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"jsonrpc":"2.0","id":"xA","method":"tools/call","params":{"name":"get","arguments":{"a":[1, 2]}}}`
	if got := string(msgs[0].Encode()); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	msgs, _, _ = ParseBody([]byte(`{"jsonrpc":"2.0","id":-0,"method":"ping","params":null}`))
	if got := string(msgs[0].Encode()); got != `{"jsonrpc":"2.0","id":0,"method":"ping"}` {
		t.Fatal(got)
	}
	msgs, _, _ = ParseBody([]byte(`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`))
	if got := string(msgs[0].Encode()); got != `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}` {
		t.Fatal(got)
	}
}

func TestFilterKeepsPagination(t *testing.T) {
	res := json.RawMessage(`{"tools":[{"name":"a","inputSchema":{}},{"name":"b"},{"name":"c"}],"nextCursor":"page2","_meta":{"x":1}}`)
	keep := func(k ListKind, n string) bool { return k.Items == "tools" && n != "b" }
	out, removed, err := FilterLists(res, keep)
	if err != nil || removed != 1 {
		t.Fatal(err, removed)
	}
	if string(out) != `{"tools":[{"name":"a","inputSchema":{}},{"name":"c"}],"nextCursor":"page2","_meta":{"x":1}}` {
		t.Fatalf("%s", out)
	}
	out, removed, _ = FilterLists(res, func(ListKind, string) bool { return true })
	if removed != 0 || string(out) != string(res) {
		t.Fatal("an unfiltered result was rewritten")
	}
	out, _, _ = FilterLists(res, func(ListKind, string) bool { return false })
	if !strings.Contains(string(out), `"tools":[]`) {
		t.Fatalf("all filtered: %s", out)
	}
	if _, _, err := FilterLists(json.RawMessage(`{"tools":"x"}`), keep); err == nil {
		t.Fatal("a malformed list passed")
	}
	if _, _, err := FilterLists(json.RawMessage(`{"Tools":[{"name":"b"}]}`), keep); err == nil {
		t.Fatal("a list member in another letter case passed")
	}
	// Every kind of list, in any result; items without a usable name go.
	out, removed, _ = FilterLists(json.RawMessage(`{"prompts":[{"name":"p"},{"Name":"b","name":"a"},{"title":"no name"}],`+
		`"resources":[{"uri":"file:///x"}],"resourceTemplates":[{"uriTemplate":"t/{id}"}]}`), func(k ListKind, n string) bool {
		return n == "p" || n == "t/{id}"
	})
	if removed != 3 || string(out) != `{"prompts":[{"name":"p"}],"resources":[],"resourceTemplates":[{"uriTemplate":"t/{id}"}]}` {
		t.Fatalf("%d %s", removed, out)
	}
	if out, _, _ := FilterLists(json.RawMessage(`[1]`), keep); string(out) != `[1]` {
		t.Fatal("a non-object result changed")
	}
}

func TestToolErrorIsReadStrictly(t *testing.T) {
	for result, want := range map[string]bool{
		`{"content":[],"isError":true}`:                     true,
		`{"isError":false,"content":[]}`:                    false,
		`{"content":[{"isError":true,"ISERROR":true}]}`:     false, // only the result's own member counts
		`{"structuredContent":{"isError":true}}`:            false,
		`{}`:                                                false,
		`[{"isError":true}]`:                                false,
		`{"content":[], "isError" : true, "_meta":{"a":1}}`: true,
	} {
		if got, err := ToolError(json.RawMessage(result)); err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", result, got, err, want)
		}
	}
	for _, result := range []string{
		`{"isError":true,"ISERROR":false}`,
		`{"iserror":true}`,
		`{"isError":"true"}`,
		`{"isError":1}`,
		`{"isError":null}`,
		`{"isError":true,"isError":false}`,
	} {
		if got, err := ToolError(json.RawMessage(result)); err == nil {
			t.Errorf("%s was read as %v", result, got)
		}
	}
}

func TestSSEReader(t *testing.T) {
	stream := "\xef\xbb\xbfevent: message\nid: 1\ndata: {\"a\":\ndata: 1}\n\n: keepalive\n\ndata: {\"b\":2}\r\n\r\ndata: {\"c\":3}\r\rdata:{\"d\":4}\r\n\rretry: 10x\nid: a\x00b\ndata\n\ndata: partial"
	var r EventReader
	var evs []Event
	// Split everywhere, including between a CR and its LF.
	for i := 0; i < len(stream); i += 7 {
		got, err := r.Feed([]byte(stream[i:min(i+7, len(stream))]))
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, got...)
	}
	if len(evs) != 6 || string(evs[0].Data) != "{\"a\":\n1}" || evs[0].ID != "1" || evs[0].Event != "message" ||
		len(evs[1].Comments) != 1 || string(evs[2].Data) != `{"b":2}` || string(evs[3].Data) != `{"c":3}` ||
		string(evs[4].Data) != `{"d":4}` || evs[5].Retry != "" || evs[5].ID != "" || string(evs[5].Data) != "" || !r.Pending() {
		t.Fatalf("%q", evs)
	}
	again, _ := (&EventReader{}).Feed(evs[0].Bytes())
	if len(again) != 1 || string(again[0].Data) != string(evs[0].Data) || again[0].ID != "1" {
		t.Fatal("event does not round-trip")
	}
}

func TestSSEEventSizeIsCapped(t *testing.T) {
	r := EventReader{Max: 100}
	if _, err := r.Feed([]byte("data: " + strings.Repeat("x", 60) + "\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Feed([]byte("data: " + strings.Repeat("y", 60) + "\n")); err == nil || !strings.Contains(err.Error(), "exceeds 100 bytes") {
		t.Fatalf("an event over the cap: %v", err)
	}
	r = EventReader{Max: 100}
	if _, err := r.Feed([]byte("data: " + strings.Repeat("z", 200))); err == nil {
		t.Fatal("an unterminated line over the cap was buffered")
	}
	r = EventReader{Max: 100}
	for i := 0; i < 50; i++ {
		if _, err := r.Feed([]byte("data: " + strings.Repeat("x", 40) + "\n\n")); err != nil {
			t.Fatalf("complete events count against the cap: %v", err)
		}
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

func TestHeaderValuesRoundTrip(t *testing.T) {
	for _, v := range []string{"get_forecast", "météo", " padded", "=?base64?x?=", "a\tb", ""} {
		enc := EncodeHeaderValue(v)
		if dec, err := DecodeHeaderValue(enc); err != nil || dec != v {
			t.Errorf("%q: encoded %q, decoded %q %v", v, enc, dec, err)
		}
	}
	if EncodeHeaderValue("get_forecast") != "get_forecast" || EncodeHeaderValue("météo") == "météo" {
		t.Fatal("plain ASCII is not kept as it is, or other text is")
	}
}
