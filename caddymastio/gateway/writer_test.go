package gateway

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// routeFor is the filter of server "s" whose policy lets agents call only
// the tool "public".
func routeFor(t *testing.T) *Route {
	m := mastiotest.New(t, mastio.Settings{Policy: "allow * tools/call s/public\n"}, nil)
	return NewRoute(m, zap.NewNop(), RouteSettings{Server: "s", MaxResponseBytes: 1 << 20})
}

// serveStream runs the response side of an exchange: upstream writes what
// an upstream would, through the gateway's writer.
func serveStream(t *testing.T, g *Route, contentType string, chunks ...string) string {
	rec := httptest.NewRecorder()
	x := &exchange{g: g, r: httptest.NewRequest("GET", "/mcp", nil), p: &mastio.Principal{Identity: registry.Identity{AgentID: "orga::a"}},
		calls: map[string]*call{}}
	w := &answerWriter{w: rec, x: x, limit: g.cfg.MaxResponseBytes}
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusOK)
	for _, c := range chunks {
		w.Write([]byte(c))
	}
	if err := w.finish(); err != nil {
		t.Fatal(err)
	}
	return rec.Body.String()
}

// TestStreamsAreFiltered: lists reach the agent filtered whichever stream
// carries them and whatever request they answer (a GET stream replaying
// answers here); priming events, keep-alives and notifications pass;
// messages that cannot be read strictly do not.
func TestStreamsAreFiltered(t *testing.T) {
	g := routeFor(t)
	out := serveStream(t, g, "text/event-stream",
		"id: prime-1\ndata: \n\n",
		": keep-alive\n\n",
		"event: message\nid: e2\ndata: {\"result\":{\"tools\":[{\"name\":\"public\"},{\"name\":\"secret\"}],\"nextCursor\":\"c2\"},",
		"\"jsonrpc\":\"2.0\",\"id\":11}\n\n",
		"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/tools/list_changed\"}\r\n\r\n",
		"data: {\"jsonrpc\":\"2.0\",\"id\":12,\"result\":{\"tools\":[{\"name\":\"secret\"}]},\"result\":{\"tools\":[]}}\n\n",
		"data: {\"jsonrpc\":\"2.0\",\"id\":13,\"result\":{\"Tools\":[{\"name\":\"secret\"}]}}\n\n")
	for _, want := range []string{"id: prime-1", ": keep-alive", `"tools":[{"name":"public"}]`, `"nextCursor":"c2"`, "id: e2",
		"notifications/tools/list_changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("the stream lacks %q:\n%s", want, out)
		}
	}
	for _, not := range []string{"secret", `"id":12`} {
		if strings.Contains(out, not) {
			t.Errorf("the stream holds %q:\n%s", not, out)
		}
	}
	// The same answer as JSON, and labelled as nothing in particular.
	for _, ct := range []string{"application/json", "text/plain"} {
		out := serveStream(t, g, ct, `{"jsonrpc":"2.0","id":3,"result":{"prompts":[{"name":"p"}],"tools":[{"name":"secret"},{"name":"public"}]}}`)
		if strings.Contains(out, "secret") || strings.Contains(out, `"name":"p"`) || !strings.Contains(out, `{"name":"public"}`) {
			t.Errorf("%s answer: %s", ct, out)
		}
	}
}

// TestAnswersAreTrimmedOfJSONWhitespaceOnly: an answer wrapped in
// whitespace JSON does not know (a vertical tab, a no-break space) is not
// read as the message inside it.
func TestAnswersAreTrimmedOfJSONWhitespaceOnly(t *testing.T) {
	g := routeFor(t)
	msg := `{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"public"}]}}`
	if out := serveStream(t, g, "application/json", " \r\n"+msg+"\t\n"); !strings.Contains(out, `"name":"public"`) {
		t.Errorf("an answer with JSON's whitespace around it: %s", out)
	}
	for _, wrapped := range []string{"\v" + msg, msg + "\f", "\u00a0" + msg} {
		if out := serveStream(t, g, "application/json", wrapped); strings.Contains(out, `"name":"public"`) {
			t.Errorf("%q was read as the message inside it: %s", wrapped, out)
		}
		if out := serveStream(t, g, "text/event-stream", "data: "+wrapped+"\n\n"); strings.Contains(out, `"name":"public"`) {
			t.Errorf("the event %q was read as the message inside it: %s", wrapped, out)
		}
	}
}

// TestIsErrorMattersInToolResultsOnly: an answer that is not a tool's
// result (here, a list answering no call) passes with whatever isError-like
// members it holds; only a tools/call result is read for its outcome.
func TestIsErrorMattersInToolResultsOnly(t *testing.T) {
	g := routeFor(t)
	out := serveStream(t, g, "application/json", `{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"public"}],"ISERROR":"x"}}`)
	if !strings.Contains(out, `"name":"public"`) || !strings.Contains(out, `"ISERROR":"x"`) {
		t.Errorf("a list answer was withheld for a member that means nothing in it: %s", out)
	}
}
