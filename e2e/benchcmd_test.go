package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchCommandRuns runs go run ./bench briefly against the binary
// under test: every scenario runs, -json is one array of the documented
// objects, and BENCHMARKS.md names the machine. It checks that the command
// works, not how fast anything is.
func TestBenchCommandRuns(t *testing.T) {
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	cmd := exec.Command("go", "run", "./bench", "-binary", caddyBin, "-n", "40", "-n1", "10", "-append", "300ms", "-agents", "200", "-rows", "2000", "-json", "-out", out)
	cmd.Dir = repoRoot
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("go run ./bench: %v\n%s", err, stderr.String())
	}
	var rows []map[string]any
	if err := json.Unmarshal(stdout, &rows); err != nil {
		t.Fatalf("-json output: %v\n%s", err, stdout)
	}
	got := map[string]map[string]any{}
	for _, r := range rows {
		if _, mib := r["mib"]; len(r) != 5 && !(mib && len(r) == 6) {
			t.Fatalf("a row has other members than name, calls_per_s, p50_ms, p99_ms, server_cpu_us (and mib): %v", r)
		}
		got[r["name"].(string)] = r
	}
	for _, name := range []string{"direct", "reverse_proxy", "mastio_auth", "gateway_full", "gateway_os", "gateway_full_2ms", "gateway_os_2ms",
		"mint", "enrollment_start", "healthz", "respond", "audit_append_1", "audit_append_8", "audit_append_64",
		"startup", "startup_200_agents", "pin_check_200_agents", "verify_2000_rows", "sessions_1000"} {
		r, ok := got[name]
		if !ok {
			t.Fatalf("no %s in %s", name, stdout)
		}
		if r["calls_per_s"].(float64) <= 0 && r["p50_ms"].(float64) <= 0 && r["mib"] == nil {
			t.Fatalf("%s: %v", name, r)
		}
	}
	if r := got["gateway_full_2ms"]; r["p50_ms"].(float64) < 2 {
		t.Fatalf("a call through a 2 ms upstream took %v ms", r["p50_ms"])
	}
	report, err := os.ReadFile(out)
	if err != nil || !strings.Contains(string(report), "## Machine") || !strings.Contains(string(report), "gateway_full") {
		t.Fatalf("BENCHMARKS.md: %v\n%s", err, report)
	}
}
