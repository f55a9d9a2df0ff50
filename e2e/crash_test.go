package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// tryAdmin sends an admin request and reports transport errors instead of
// failing the test: the server may be killed under it.
func (s *server) tryAdmin(c *http.Client, method, path string, body any) (int, map[string]any, error) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, s.url(path), rd)
	req.Header.Set("X-Admin-Secret", adminSecret)
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out := map[string]any{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, nil, err // cut off: not acknowledged
	}
	return resp.StatusCode, out, nil
}

// acked is what the gateway acknowledged (a 2xx answer read whole) before
// it was killed.
type acked struct {
	mu        sync.Mutex
	agents    []string // created
	revoked   []string
	approved  []string // agent ids created by an approval
	rotations int
	calls     int
	toolCalls []string // JSON-RPC ids of MCP tool calls answered
}

func (a *acked) add(f func()) { a.mu.Lock(); f(); a.mu.Unlock() }

// TestCrashLosesNothingAcknowledged SIGKILLs the gateway at several points
// of sustained mixed traffic — agents created and revoked, enrollments
// started and approved, agent calls, MCP tool calls through the gateway,
// signing key rotations — and restarts it each time on the same data:
// every acknowledged creation, revocation and approval is there, nothing
// is half-applied (every agent in the registry has its agent.created row
// and every revoked one its agent.revoked row, and the other way round),
// every answered tool call has its mcp.forward row, a call whose outcome
// row the kill took is counted by verify as "outcome unknown", and the
// audit chain verifies.
func TestCrashLosesNothingAcknowledged(t *testing.T) {
	s := batchGateway(t, "")
	c := s.client()
	c.Timeout = 10 * time.Second
	var got acked
	caller := makeIdentity(t, s, "caller", "api:read")
	toolCaller := makeIdentity(t, s, "tool-caller", "mcp:call").Session()
	round := 0
	for _, killAfter := range []time.Duration{150 * time.Millisecond, 600 * time.Millisecond, 1500 * time.Millisecond} {
		round++
		traffic := newLoad()
		traffic.loop(func(i int) { // create, and revoke every third
			name := fmt.Sprintf("r%d-a%d", round, i)
			code, _, err := s.tryAdmin(c, "POST", "/v1/admin/agents", map[string]any{"agent_name": name})
			if err != nil || code != 201 {
				time.Sleep(5 * time.Millisecond)
				return
			}
			got.add(func() { got.agents = append(got.agents, "orga::"+name) })
			if i%3 == 0 {
				if code, _, err := s.tryAdmin(c, "POST", "/v1/admin/agents/orga::"+name+"/revoke", map[string]any{"reason": "crash test"}); err == nil && code == 200 {
					got.add(func() { got.revoked = append(got.revoked, "orga::"+name) })
				}
			}
		})
		traffic.loop(func(i int) { // enroll and approve
			p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), "id"),
				RootCAs: s.rootPool(), Requester: client.Requester{Name: "Crash", Email: "crash@orga.example"}})
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				return
			}
			name := fmt.Sprintf("r%d-e%d", round, i)
			if code, _, err := s.tryAdmin(c, "POST", "/v1/admin/enrollments/"+p.SessionID+"/approve", map[string]any{"agent_id": name}); err == nil && code == 200 {
				got.add(func() { got.approved = append(got.approved, "orga::"+name) })
			}
		})
		traffic.loop(func(int) { // calls
			if code, _, err := newAgentClient(s, caller.Certificate, false).get(t, "/v1/agents/me"); err == nil && code == 200 {
				got.add(func() { got.calls++ })
			} else {
				time.Sleep(5 * time.Millisecond)
			}
		})
		traffic.loop(func(i int) { // MCP tool calls
			id := fmt.Sprintf("%d", round*1_000_000+i)
			req, _ := http.NewRequest("POST", s.url("/mcp/batch"), strings.NewReader(
				`{"jsonrpc":"2.0","id":`+id+`,"method":"tools/call","params":{"name":"get_forecast","arguments":{"city":"Rome"}}}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			resp, err := toolCaller.HTTPClient().Do(req)
			if err != nil {
				time.Sleep(5 * time.Millisecond)
				return
			}
			answer, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 && strings.Contains(string(answer), `"echo":"tools/call"`) {
				got.add(func() { got.toolCalls = append(got.toolCalls, id) })
			}
		})
		traffic.loop(func(int) { // key rotation, now and then
			time.Sleep(100 * time.Millisecond)
			if code, _, err := s.tryAdmin(c, "POST", "/v1/admin/keys/rotate", map[string]any{}); err == nil && code == 200 {
				got.add(func() { got.rotations++ })
			}
		})
		time.Sleep(killAfter) // the kill point: mid-traffic, by design
		s.kill()
		traffic.halt()
		s.start()
	}
	t.Logf("acknowledged before the kills: %d agents, %d revocations, %d approvals, %d key rotations, %d calls, %d MCP tool calls",
		len(got.agents), len(got.revoked), len(got.approved), got.rotations, got.calls, len(got.toolCalls))
	if len(got.agents) == 0 || len(got.approved) == 0 || got.calls == 0 || len(got.toolCalls) == 0 {
		t.Fatal("the traffic did not get going: the test proves nothing")
	}

	// What the registry holds, and what the audit log says of it.
	code, list := s.adminCall(t, "GET", "/v1/admin/agents", adminSecret, nil)
	if code != 200 {
		t.Fatalf("list agents: %d", code)
	}
	var agents struct {
		Agents []struct {
			AgentID string `json:"agent_id"`
			Status  string `json:"status"`
		} `json:"agents"`
	}
	json.Unmarshal([]byte(list["_raw"].(string)), &agents)
	status := map[string]string{}
	for _, a := range agents.Agents {
		status[a.AgentID] = a.Status
	}
	for _, id := range append(append([]string{}, got.agents...), got.approved...) {
		if status[id] == "" {
			t.Errorf("agent %s was acknowledged and is gone", id)
		}
	}
	for _, id := range got.revoked {
		if status[id] != "revoked" {
			t.Errorf("agent %s was acknowledged revoked and is %q", id, status[id])
		}
	}
	rows := s.exportAudit(t)
	created, revokedRows := map[string]bool{}, map[string]bool{}
	forwarded, outcomes := map[string]bool{}, 0
	for _, r := range rows {
		switch r.Type {
		case "agent.created":
			created[r.Subject] = true
		case "agent.revoked":
			revokedRows[r.Subject] = true
		case "mcp.forward":
			var d struct {
				RequestID string `json:"request_id"`
			}
			json.Unmarshal(r.Details, &d)
			forwarded[d.RequestID] = true
		case "mcp.call":
			if strings.Contains(string(r.Details), `"forward_seq":`) {
				outcomes++
			}
		}
	}
	for _, id := range got.toolCalls {
		if !forwarded[id] {
			t.Errorf("MCP tool call %s was answered and has no mcp.forward row", id)
		}
	}
	for id, st := range status {
		if !created[id] {
			t.Errorf("agent %s is registered without its agent.created row: half-applied", id)
		}
		if (st == "revoked") != revokedRows[id] {
			t.Errorf("agent %s is %s, and its agent.revoked row present = %v: half-applied", id, st, revokedRows[id])
		}
	}
	for id := range created {
		if status[id] == "" {
			t.Errorf("agent.created for %s, which the registry does not hold: half-applied", id)
		}
	}
	s.stop()
	out, code := s.operator("audit", "verify", "--db", filepath.Join(s.dataDir, "mastio.db"))
	if code != 0 || !strings.Contains(out, "OK:") {
		t.Fatalf("the chain after %d kills: exit %d\n%s", round, code, out)
	}
	lost := len(forwarded) - outcomes
	t.Logf("%d MCP calls forwarded, %d of their outcome rows lost to the kills", len(forwarded), lost)
	if (lost > 0) != strings.Contains(out, fmt.Sprintf("outcome unknown: %d forwarded MCP calls", lost)) {
		t.Fatalf("verify, with %d outcomes lost:\n%s", lost, out)
	}
}
