package mcp

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzEventReader checks that the SSE reader sees the same events however
// the stream is cut: the gateway filters each event it reads, so a split
// that changed what an event is would let an event through unread.
func FuzzEventReader(f *testing.F) {
	for _, seed := range []string{
		"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
		"event: message\r\nid: 7\r\ndata: a\r\ndata: b\r\n\r\n",
		"\xef\xbb\xbfdata: x\r\rdata: y\n\n",
		": comment\nretry: 10\nid: a\x00b\ndata\n\n",
		"data:no-space\ndata:  two\n\n\n\ndata: tail",
	} {
		f.Add([]byte(seed), uint8(3))
	}
	f.Fuzz(func(t *testing.T, stream []byte, cut uint8) {
		read := func(step int) ([]Event, bool) {
			r := &EventReader{Max: 1 << 16}
			var all []Event
			for i := 0; i < len(stream); i += step {
				evs, err := r.Feed(stream[i:min(i+step, len(stream))])
				if err != nil {
					return all, false
				}
				all = append(all, evs...)
			}
			return all, true
		}
		whole, okWhole := read(max(len(stream), 1))
		bytewise, okBytes := read(1)
		chunked, okChunks := read(int(cut%16) + 1)
		if okWhole != okBytes || okWhole != okChunks {
			t.Fatalf("the limit depends on the cut: whole %v, bytewise %v, chunks %v", okWhole, okBytes, okChunks)
		}
		if !okWhole {
			return
		}
		if !reflect.DeepEqual(whole, bytewise) || !reflect.DeepEqual(whole, chunked) {
			t.Fatalf("events depend on the cut:\nwhole    %+v\nbytewise %+v\nchunked  %+v", whole, bytewise, chunked)
		}
		for _, ev := range whole {
			if reflect.DeepEqual(ev, Event{}) {
				continue // only unknown fields: nothing to pass on
			}
			// What the gateway writes on is read back as the same event.
			again, err := (&EventReader{}).Feed(ev.Bytes())
			if err != nil || len(again) != 1 || !reflect.DeepEqual(again[0], ev) {
				t.Fatalf("event %+v re-read as %+v (%v)", ev, again, err)
			}
		}
	})
}

// FuzzFilterLists checks the list filter: what it keeps passes keep, what
// it drops does not (filtering its output again removes nothing), a
// result it leaves alone comes back byte for byte, and its output is JSON.
func FuzzFilterLists(f *testing.F) {
	for _, seed := range []string{
		`{"tools":[{"name":"a"},{"name":"secret"}]}`,
		`{"prompts":[{"name":"p"}],"nextCursor":"x"}`,
		`{"resources":[{"uri":"file:///a","name":"a"},{"uri":"file:///secret"}]}`,
		`{"resourceTemplates":[{"uriTemplate":"file:///{x}"}]}`,
		`{"tools":[{"name":"a","name":"secret"}]}`,
		`{"tools":[{"Name":"secret"}],"Tools":[{"name":"secret"}]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, result []byte) {
		if !json.Valid(result) {
			return // results reach the filter inside a message already read as JSON
		}
		keep := func(_ ListKind, name string) bool { return !bytes.Contains([]byte(name), []byte("secret")) }
		out, removed, err := FilterLists(result, keep)
		if err != nil {
			return
		}
		if removed == 0 && !bytes.Equal(out, result) {
			t.Fatalf("nothing removed but the result changed:\n%s\n%s", result, out)
		}
		if !json.Valid(out) {
			t.Fatalf("output is not JSON: %q", out)
		}
		// Whatever is kept passes keep: filtering again removes nothing.
		again, removedAgain, err := FilterLists(out, keep)
		if err != nil || removedAgain != 0 || !bytes.Equal(again, out) {
			t.Fatalf("filtering the output again removed %d (%v):\n%s\n%s", removedAgain, err, out, again)
		}
	})
}

// FuzzToolError checks the reading of a result's isError against a plain
// reading of its members: what ToolError accepts has at most one member
// named isError in any letter case, spelled exactly so and boolean, and
// ToolError's answer is that member's value.
func FuzzToolError(f *testing.F) {
	for _, seed := range []string{
		`{"content":[],"isError":true}`,
		`{"isError":false}`,
		`{"isError":true,"ISERROR":false}`,
		`{"isError":"true"}`,
		`{"content":[{"isError":true}]}`,
		`[true]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, result []byte) {
		if !json.Valid(result) {
			return // results reach it inside a message already read as JSON
		}
		got, err := ToolError(result)
		if err != nil {
			return
		}
		var members map[string]json.RawMessage
		if json.Unmarshal(result, &members) != nil {
			if got {
				t.Fatalf("%s is not an object, yet read as a tool error", result)
			}
			return
		}
		want, n := false, 0
		for name, v := range members {
			if !strings.EqualFold(name, "isError") {
				continue
			}
			n++
			if name != "isError" || json.Unmarshal(v, &want) != nil {
				t.Fatalf("%s accepted with the member %q = %s", result, name, v)
			}
		}
		if n > 1 || got != want {
			t.Fatalf("%s read as %v; its isError members say %v (%d of them)", result, got, want, n)
		}
	})
}
