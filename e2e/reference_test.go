package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// referenceNPM installs the npm packages pinned in testdata/npm (the
// reference MCP server, the TypeScript SDK, oidc-provider) once, and
// returns their directory.
func referenceNPM(t testing.TB) string {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Fatal("the reference MCP server and client need Node.js and npm: apt-get install nodejs npm (.ci/run does)")
	}
	npmDir := filepath.Join(repoRoot, "e2e", "testdata", "npm")
	npmOnce.Do(func() {
		installed := true
		for _, pkg := range []string{"@modelcontextprotocol/sdk", "@modelcontextprotocol/server-everything", "oidc-provider"} {
			if _, err := os.Stat(filepath.Join(npmDir, "node_modules", pkg, "package.json")); err != nil {
				installed = false
			}
		}
		if installed {
			return
		}
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
		cmd.Dir = npmDir
		if out, err := cmd.CombinedOutput(); err != nil {
			npmErr = fmt.Errorf("npm ci in %s: %v\n%s", npmDir, err, out)
		}
	})
	if npmErr != nil {
		t.Fatal(npmErr)
	}
	return npmDir
}

var (
	npmOnce sync.Once
	npmErr  error
)

// referenceServer runs @modelcontextprotocol/server-everything, the MCP
// project's reference server (TypeScript SDK: Streamable HTTP with SSE
// responses, sessions and GET streams), from the version pinned in
// testdata/npm, on a loopback port. It returns the port.
func referenceServer(t testing.TB) int {
	t.Helper()
	entry := filepath.Join(referenceNPM(t), "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js")
	port := freePort(t)
	cmd := exec.Command("node", "--import", filepath.Join(repoRoot, "e2e", "testdata", "loopback.mjs"), entry, "streamableHttp")
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port))
	startHelper(t, "the reference MCP server", cmd, func(string) bool { return listening(port) })
	return port
}

// startHelper starts a process the test needs, waits (30 s at most) until
// ready holds for its output so far, and stops it when the test ends,
// logging its output if the test failed. It returns the output.
func startHelper(t testing.TB, what string, cmd *exec.Cmd, ready func(out string) bool) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", what, out.String())
		}
	})
	waitFor(t, what+" to be ready", 30*time.Second, func() bool { return ready(out.String()) })
	return out
}

// listening reports whether something accepts connections on the
// loopback port.
func listening(port int) bool {
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestReferenceServerBehindGateway puts the MCP project's reference server
// behind both gateway forms: the per-route mastio_mcp filter in front of
// reverse_proxy, and the /v1/mcp aggregator with the server registered as
// an upstream. Only the tools the policy allows are listed and callable.
func TestReferenceServerBehindGateway(t *testing.T) {
	port := referenceServer(t)
	upstream := fmt.Sprintf("http://127.0.0.1:%d/mcp", port)

	// What the server offers when asked directly.
	direct, err := mcp.NewClient(&mcp.Implementation{Name: "direct", Version: "1"}, nil).Connect(context.Background(),
		&mcp.StreamableClientTransport{Endpoint: upstream, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatalf("connecting to the reference server directly: %v", err)
	}
	all := toolNames(t, direct)
	direct.Close()
	if !contains(strings.Join(all, " "), "echo", "get-sum", "get-env") {
		t.Fatalf("the reference server's tools: %v", all)
	}

	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call everything/echo
			allow capability:mcp:call tools/call everything/get-sum
		}
		mcp_server everything {
			url {$EVERYTHING_URL}
		}`, `
	handle /mcp/everything {
		mastio_auth
		mastio_mcp everything
		reverse_proxy {$EVERYTHING_ADDR} {
			rewrite /mcp
		}
	}`, "EVERYTHING_URL="+upstream, fmt.Sprintf("EVERYTHING_ADDR=127.0.0.1:%d", port))
	t.Cleanup(s.kill)
	caller := makeIdentity(t, s, "caller", "mcp:call")

	for _, tc := range []struct{ path, prefix string }{{"/mcp/everything", ""}, {"/v1/mcp", "everything."}} {
		t.Run(tc.path, func(t *testing.T) {
			cs := connectMCP(t, s, caller, tc.path)
			if got := strings.Join(toolNames(t, cs), ","); got != tc.prefix+"echo,"+tc.prefix+"get-sum" {
				t.Fatalf("tools/list through the gateway: %s", got)
			}
			if text, err := callText(cs, tc.prefix+"echo", map[string]any{"message": "hello mastio"}); err != nil || !strings.Contains(text, "hello mastio") {
				t.Fatalf("echo: %q %v", text, err)
			}
			if text, err := callText(cs, tc.prefix+"get-sum", map[string]any{"a": 2, "b": 3}); err != nil || !strings.Contains(text, "5") {
				t.Fatalf("get-sum: %q %v", text, err)
			}
			// get-env would hand the caller the server's environment.
			_, err := callText(cs, tc.prefix+"get-env", nil)
			if rpcCode(err) != -32000 || !strings.Contains(err.Error(), "no rule allows it") {
				t.Fatalf("get-env: %v", err)
			}
		})
	}

	closeSessions()
	s.stop()
	db := openDB(t, s.dataDir)
	rows, err := db.Query(`SELECT subject, result FROM audit_events WHERE event_type = 'mcp.call' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var subject, result string
		rows.Scan(&subject, &result)
		got = append(got, subject+"="+result)
	}
	want := "everything/echo=ok everything/get-sum=ok everything/get-env=denied"
	if strings.Join(got, " ") != want+" "+want {
		t.Fatalf("mcp.call audit rows: %v", got)
	}
	verifyChain(t, db)
}
