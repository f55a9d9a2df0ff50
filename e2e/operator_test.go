package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// TestOperatorCLI runs the runbook's operator tasks with caddy mastio
// agents|enrollments|keys|policy against a running gateway, as the
// operator would on its machine (the admin secret from the environment,
// the URL and CA from the defaults): tables by default, the API's JSON
// with --json, clear errors.
func TestOperatorCLI(t *testing.T) {
	s := exampleServer(t, "", "")
	makeIdentity(t, s, "ops-agent", "mcp:call")
	run := func(want int, args ...string) string {
		t.Helper()
		out, code := s.operator(append(args, "--data-dir", s.dataDir)...)
		if code != want {
			t.Fatalf("caddy mastio %s: exit %d, want %d\n%s", strings.Join(args, " "), code, want, out)
		}
		return out
	}

	if out := run(0, "agents", "list"); !contains(out, "AGENT", "STATUS", "orga::ops-agent", "active", "mcp:call") {
		t.Fatalf("agents list:\n%s", out)
	}
	var list struct {
		Count  int `json:"count"`
		Agents []struct {
			AgentID string `json:"agent_id"`
		} `json:"agents"`
	}
	if err := json.Unmarshal([]byte(run(0, "agents", "list", "--json")), &list); err != nil || list.Count != 1 || list.Agents[0].AgentID != "orga::ops-agent" {
		t.Fatalf("agents list --json: %+v %v", list, err)
	}
	if out := run(0, "agents", "show", "ops-agent"); !contains(out, "spiffe://mastio.local/orga/ops-agent", "CERT SHA-256") {
		t.Fatalf("agents show:\n%s", out)
	}
	if out := run(1, "agents", "show", "nobody"); !contains(out, "404", "agent_not_found") {
		t.Fatalf("agents show of an unknown agent:\n%s", out)
	}

	// rotate: the key is made here, 0600; the certificate is for it.
	dir := filepath.Join(s.dir, "rotated")
	if out := run(0, "agents", "rotate", "ops-agent", "--out", dir, "--grace", "1m"); !contains(out, "issued orga::ops-agent a certificate") {
		t.Fatalf("agents rotate:\n%s", out)
	}
	if m := fileMode(t, filepath.Join(dir, "agent.key")); m != 0o600 {
		t.Fatalf("agent.key mode %04o", m)
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "agent.key"))
	certPEM, _ := os.ReadFile(filepath.Join(dir, "agent.crt"))
	kb, _ := pem.Decode(keyPEM)
	cb, _ := pem.Decode(certPEM)
	if kb == nil || cb == nil {
		t.Fatal("the rotated key or certificate is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil || !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.(*ecdsa.PrivateKey).Public()) {
		t.Fatalf("the certificate is not for the key made here: %v", err)
	}
	if out := run(1, "agents", "rotate", "ops-agent", "--out", dir); !contains(out, "exists") {
		t.Fatalf("rotate into a directory in use:\n%s", out)
	}

	if out := run(0, "agents", "revoke", "ops-agent", "--reason", "decommissioned"); !contains(out, "revoked orga::ops-agent") {
		t.Fatalf("agents revoke:\n%s", out)
	}
	if out := run(0, "agents", "list", "--status", "revoked"); !contains(out, "orga::ops-agent", "revoked") {
		t.Fatalf("agents list --status revoked:\n%s", out)
	}

	// Enrollments: one approved, one rejected.
	start := func(name string) string {
		p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), name),
			RootCAs: s.rootPool(), Requester: client.Requester{Name: name, Email: name + "@orga.example"}})
		if err != nil {
			t.Fatal(err)
		}
		return p.SessionID
	}
	first, second := start("Ada"), start("Bob")
	if out := run(0, "enrollments", "list", "--status", "pending"); !contains(out, first, second, "Ada", "pending") {
		t.Fatalf("enrollments list:\n%s", out)
	}
	if out := run(1, "enrollments", "approve", first); !contains(out, "--agent-id is required") {
		t.Fatalf("approve without an agent id:\n%s", out)
	}
	if out := run(0, "enrollments", "approve", first, "--agent-id", "ada-bot", "--capability", "mcp:call"); !contains(out, "approved "+first, "orga::ada-bot") {
		t.Fatalf("enrollments approve:\n%s", out)
	}
	if out := run(0, "enrollments", "reject", second, "--reason", "unknown requester"); !contains(out, "rejected "+second) {
		t.Fatalf("enrollments reject:\n%s", out)
	}
	if out := run(1, "enrollments", "reject", second); !contains(out, "409") {
		t.Fatalf("rejecting twice:\n%s", out)
	}

	if out := run(0, "keys", "rotate"); !contains(out, "is active", "verifies until") {
		t.Fatalf("keys rotate:\n%s", out)
	}

	// Policy: a bad rule names its line; a good one is in force at once.
	rules := filepath.Join(s.dir, "rules.txt")
	writeFile(t, rules, "allow agent:orga::ada-bot tools/call weather/get_forecast\nallow nobody\n")
	if out := run(1, "policy", "put", rules); !contains(out, "400", "invalid_policy", "line 2") {
		t.Fatalf("policy put of a bad rule:\n%s", out)
	}
	writeFile(t, rules, "allow agent:orga::ada-bot tools/call weather/get_forecast\n")
	if out := run(0, "policy", "put", rules); !contains(out, "stored 1 rules") {
		t.Fatalf("policy put:\n%s", out)
	}
	if out := run(0, "policy", "get"); !contains(out, "RULE", "store:1", "agent:orga::ada-bot", "weather/get_forecast") {
		t.Fatalf("policy get:\n%s", out)
	}
	if out := run(0, "policy", "check", "--agent", "orga::ada-bot", "--server", "weather", "--name", "get_forecast"); !contains(out, "ALLOWED", "store:1") {
		t.Fatalf("policy check:\n%s", out)
	}
	if out := run(0, "policy", "check", "--agent", "orga::ada-bot", "--server", "weather", "--name", "delete_everything"); !contains(out, "DENIED") {
		t.Fatalf("policy check of a denied call:\n%s", out)
	}

	// Without the secret: a clear refusal, nothing done.
	cmd := s.command("mastio", "agents", "list", "--data-dir", filepath.Join(s.dir, "elsewhere"), "--url", s.url(""),
		"--ca", filepath.Join(s.dataDir, "pki", "org-ca.crt"))
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no admin secret") {
		t.Fatalf("without a secret: %v\n%s", err, out)
	}
}
