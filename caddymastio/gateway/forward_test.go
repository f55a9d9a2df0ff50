package gateway_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// atUpstream is what the audit log held while the upstream had a call.
type atUpstream struct {
	forwards int64 // mcp.forward rows committed
	unknown  int64 // forwarded calls verify saw without an outcome
}

// TestForwardRowIsCommittedWhileTheUpstreamWorks: through the route and
// through /v1/mcp, a call's mcp.forward row (the decision) is committed
// while the upstream works on it: verify then shows the call as "outcome
// unknown". After the answer the mcp.call row names it in forward_seq and
// no call is left unknown.
func TestForwardRowIsCommittedWhileTheUpstreamWorks(t *testing.T) {
	weather := mcptest.Weather(t, false)
	var m *mastio.Mastio
	seen := make(chan atUpstream, 4)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if bytes.Contains(body, []byte(`"tools/call"`)) {
			res, err := m.VerifyAudit(r.Context(), 0, 0) // waits for the rows queued so far
			if err != nil || !res.OK() {
				t.Errorf("verify at the upstream: %+v %v", res, err)
			}
			seen <- atUpstream{forwards: int64(len(mastiotest.Events(t, m, audit.TypeMCPForward))), unknown: res.Unknown.Count}
		}
		weather.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	e := newEnvTo(t, gateway.RouteSettings{}, "allow * tools/call weather/get_forecast\n", up)
	m = e.m
	a := mastiotest.NewAgent(t, e.m, "forecaster", "mcp:call")

	for i, path := range []string{"/weather/mcp", "/v1/mcp"} {
		cs := e.connect(a, path)
		name := "get_forecast"
		if path == "/v1/mcp" {
			name = "weather.get_forecast"
		}
		res, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: name, Arguments: map[string]any{"city": "Oslo"}})
		if err != nil || mcptest.TextOf(res) != "sunny in Oslo" {
			t.Fatalf("%s: %v %v", path, mcptest.TextOf(res), err)
		}
		got := <-seen
		if want := int64(i + 1); got.forwards != want || got.unknown != 1 {
			t.Errorf("%s: at the upstream, %d mcp.forward rows and %d calls with outcome unknown; want %d and 1", path, got.forwards, got.unknown, want)
		}
	}

	forwards, calls := mastiotest.Events(t, e.m, audit.TypeMCPForward), mastiotest.Events(t, e.m, audit.TypeMCPCall)
	if len(forwards) != 2 || len(calls) != 2 {
		t.Fatalf("%d mcp.forward and %d mcp.call rows, want 2 and 2", len(forwards), len(calls))
	}
	for i := range forwards {
		f, c := mastiotest.Details(t, forwards[i]), mastiotest.Details(t, calls[i])
		if _, has := f["outcome"]; has || f["decision"] != "allow" || f["args_sha256"] != c["args_sha256"] || f["jkt"] != c["jkt"] {
			t.Errorf("forward row %v for call row %v", f, c)
		}
		if c["forward_seq"] != float64(forwards[i].Seq) || c["outcome"] != "ok" || calls[i].Seq < forwards[i].Seq {
			t.Errorf("call row %d (%v) does not follow its forward row %d", calls[i].Seq, c, forwards[i].Seq)
		}
	}
	if res, err := e.m.VerifyAudit(context.Background(), 0, 0); err != nil || !res.OK() || res.Unknown.Count != 0 {
		t.Fatalf("verify after the answers: %+v %v", res, err)
	}
}
