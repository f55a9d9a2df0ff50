package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// connectListen runs `caddy mastio connect --listen` for the identity and
// returns the URL it prints for the client.
func connectListen(t *testing.T, dir, path string) string {
	t.Helper()
	cmd := exec.Command(caddyBin, "mastio", "connect", "--listen", "127.0.0.1:0", "--dir", dir, "--path", path)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = &syncBuffer{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "http://127.0.0.1:") {
		t.Fatalf("connect --listen printed %q (%v): %s", line, err, cmd.Stderr)
	}
	return strings.TrimSpace(line)
}

// tsStockClient runs the TypeScript SDK's client (testdata/npm) with args.
func tsStockClient(t *testing.T, tool, denied string, args ...string) (tools []string, text, refusal string) {
	t.Helper()
	referenceNPM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{filepath.Join(repoRoot, "e2e", "testdata", "npm", "stock-client.mjs")}, args...)...)
	cmd.Env = append(os.Environ(), "TOOL="+tool, "DENIED="+denied)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("the TypeScript client: %v\n%s\n%s", err, out, stderr)
	}
	var res struct {
		Tools  []string `json:"tools"`
		Text   string   `json:"text"`
		Denied string   `json:"denied"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("the TypeScript client printed %s", out)
	}
	sort.Strings(res.Tools)
	return res.Tools, res.Text, res.Denied
}

// The official Go and TypeScript SDK clients, unmodified and with no DPoP
// code of their own, reach tools through caddy mastio connect, over stdio
// and over HTTP, on a gateway route and on the aggregator.
func TestStockClientsThroughConnect(t *testing.T) {
	s := mcpServer(t)
	id := makeIdentity(t, s, "desktop", "mcp:call")
	want := "get_forecast slow"

	// The Go SDK client launches the bridge as its stdio server.
	cmd := exec.Command(caddyBin, "mastio", "connect", "--stdio", "--dir", id.Dir, "--path", "/mcp/sse")
	cmd.Stderr = &syncBuffer{}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "go-stock-client", Version: "1"}, nil).Connect(context.Background(),
		&mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect --stdio: %v\n%s", err, cmd.Stderr)
	}
	checkStockSession(t, cs, want)
	cs.Close()

	// The Go SDK client over the bridge's loopback HTTP endpoint.
	cs, err = mcp.NewClient(&mcp.Implementation{Name: "go-stock-client", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: connectListen(t, id.Dir, "/mcp/json"), MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkStockSession(t, cs, want)
	cs.Close()

	// The TypeScript SDK client, both ways.
	for _, args := range [][]string{
		{"stdio", caddyBin, "mastio", "connect", "--stdio", "--dir", id.Dir, "--path", "/mcp/sse"},
		{"http", connectListen(t, id.Dir, "/mcp/sse")},
	} {
		tools, text, denied := tsStockClient(t, "get_forecast", "delete_everything", args...)
		if strings.Join(tools, " ") != want || text != "sunny in Lima" || !strings.Contains(denied, "not allowed") {
			t.Errorf("TypeScript client, %s: tools %v, text %q, denied %q", args[0], tools, text, denied)
		}
	}
}

func checkStockSession(t *testing.T, cs *mcp.ClientSession, want string) {
	t.Helper()
	if got := strings.Join(toolNames(t, cs), " "); got != want {
		t.Fatalf("tools %q, want %q", got, want)
	}
	if text, err := callText(cs, "get_forecast", map[string]any{"city": "Lima"}); err != nil || text != "sunny in Lima" {
		t.Fatalf("allowed call: %q %v", text, err)
	}
	if _, err := callText(cs, "delete_everything", map[string]any{}); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("denied call: %v", err)
	}
}

// Revoked while connected: the client reads the refusal, with its reason,
// as a JSON-RPC error.
func TestConnectReportsARevocation(t *testing.T) {
	s := mcpServer(t)
	id := makeIdentity(t, s, "revoked-desktop", "mcp:call")
	cmd := exec.Command(caddyBin, "mastio", "connect", "--stdio", "--dir", id.Dir, "--path", "/mcp/json")
	cmd.Stderr = &syncBuffer{}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "go-stock-client", Version: "1"}, nil).Connect(context.Background(),
		&mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := callText(cs, "get_forecast", map[string]any{"city": "x"}); err != nil {
		t.Fatal(err)
	}
	if code, _ := s.adminCall(t, "POST", "/registry/agents/revoked-desktop/revoke", adminSecret, nil); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	_, err = callText(cs, "get_forecast", map[string]any{"city": "x"})
	if err == nil || !strings.Contains(err.Error(), "agent_revoked") {
		t.Fatalf("a call after the revocation: %v", err)
	}
	// Its stderr is copied from a pipe: the note may land after the answer.
	waitFor(t, "the bridge to say it stopped", 10*time.Second, func() bool {
		return strings.Contains(cmd.Stderr.(*syncBuffer).String(), "no further request is sent")
	})
}
