package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// holdUpstream is an MCP server (official Go SDK, SSE answers, sessions
// with GET streams) whose tool "hold" reports that it started and then
// runs until it is cancelled or ten seconds pass.
func holdUpstream(t testing.TB, started chan<- struct{}) *httptest.Server {
	server := mcp.NewServer(&mcp.Implementation{Name: "hold", Version: "1.0.0"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "hold"}, func(ctx context.Context, req *mcp.CallToolRequest, in map[string]any) (*mcp.CallToolResult, any, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "held result"}}}, nil, nil
	})
	srv := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil))
	t.Cleanup(srv.Close)
	return srv
}

// TestRevocationEndsOpenStreamsAndCalls: an agent holds a GET stream open
// and has a call in flight; revoking it (or rotating its certificate out)
// ends both within a second, the call's result is not delivered, and its
// audit row, after the change's, says so.
func TestRevocationEndsOpenStreamsAndCalls(t *testing.T) {
	started := make(chan struct{}, 4)
	up := holdUpstream(t, started)
	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call hold/hold
		}`, `
	handle /mcp/hold {
		mastio_auth
		mastio_mcp hold
		reverse_proxy {$HOLD_UPSTREAM}
	}`, "HOLD_UPSTREAM="+up.URL)

	for _, change := range []struct{ name, path, event string }{
		{"revoke", "/revoke", "agent.revoked"},
		{"rotate", "/rotate-cert", "agent.cert_rotated"},
	} {
		t.Run(change.name, func(t *testing.T) {
			agent := makeIdentity(t, s, "agent-"+change.name, "mcp:call")
			hc := agent.Session().HTTPClient()
			c := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil)
			cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: s.url("/mcp/hold"), HTTPClient: hc,
				MaxRetries: -1, DisableStandaloneSSE: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			hdr := map[string]string{"Mcp-Session-Id": cs.ID(), "Mcp-Protocol-Version": cs.InitializeResult().ProtocolVersion}

			// A GET stream held open.
			req, _ := http.NewRequest("GET", s.url("/mcp/hold"), nil)
			req.Header.Set("Accept", "text/event-stream")
			for k, v := range hdr {
				req.Header.Set(k, v)
			}
			stream, err := hc.Do(req)
			if err != nil || stream.StatusCode != 200 {
				t.Fatalf("GET stream: %v %v", stream, err)
			}
			streamEnded := make(chan time.Time, 1)
			go func() {
				io.Copy(io.Discard, stream.Body)
				streamEnded <- time.Now()
			}()
			// A call in flight.
			type answer struct {
				code int
				body string
				at   time.Time
			}
			answered := make(chan answer, 1)
			go func() {
				req, _ := http.NewRequest("POST", s.url("/mcp/hold"), strings.NewReader(`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"hold"}}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				for k, v := range hdr {
					req.Header.Set(k, v)
				}
				resp, err := hc.Do(req)
				if err != nil {
					answered <- answer{0, err.Error(), time.Now()}
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				answered <- answer{resp.StatusCode, string(body), time.Now()}
			}()
			select {
			case <-started:
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not reach the upstream")
			}

			name := "orga::agent-" + change.name
			code, b := s.adminCall(t, "POST", "/v1/admin/agents/"+name+change.path, adminSecret, nil)
			if code != 200 {
				t.Fatalf("%s: %d %v", change.name, code, b["_raw"])
			}
			changed := time.Now()
			select {
			case at := <-streamEnded:
				if d := at.Sub(changed); d > time.Second {
					t.Errorf("the GET stream ended %s after the %s", d, change.name)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the GET stream is still open 5s after the %s", change.name)
			}
			select {
			case a := <-answered:
				if d := a.at.Sub(changed); d > time.Second {
					t.Errorf("the call was answered %s after the %s", d, change.name)
				}
				if a.code != 401 || strings.Contains(a.body, "held result") {
					t.Fatalf("the call in flight: %d %s", a.code, a.body)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the call is still in flight 5s after the %s", change.name)
			}
		})
	}
	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	for _, change := range []struct{ agent, event string }{{"orga::agent-revoke", "agent.revoked"}, {"orga::agent-rotate", "agent.cert_rotated"}} {
		var changeSeq, callSeq int64
		var outcome string
		db.QueryRow(`SELECT seq FROM audit_events WHERE event_type = ? AND subject = ?`, change.event, change.agent).Scan(&changeSeq)
		db.QueryRow(`SELECT seq, json_extract(details, '$.outcome') FROM audit_events WHERE event_type = 'mcp.call' AND actor = ?`,
			"agent:"+change.agent).Scan(&callSeq, &outcome)
		if changeSeq == 0 || callSeq < changeSeq || outcome != "agent_revoked" {
			t.Errorf("%s: %s at seq %d, the call at seq %d with outcome %q", change.agent, change.event, changeSeq, callSeq, outcome)
		}
	}
	verifyChain(t, db)
}

// metric returns the value of one sample of Caddy's /metrics (0 if absent).
func (s *server) metric(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	_, body := s.admin("GET", "/metrics", nil)
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if contains(line, labels...) {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			return v
		}
	}
	return 0
}
