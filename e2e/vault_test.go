package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/internal/vaulttest"
)

// TestOrgCAKeysInVault is runbook §4 with the Org CA's keys in Vault (the
// stand-in of package vaulttest): the keys go to secret/data/mastio and
// never to disk; a sealed or unreachable Vault, a refused token and a
// missing field each give the runbook's words in /readyz (503) and in the
// answer to an issuance, while agents already enrolled keep working; the
// gateway recovers by itself once Vault answers, also after starting while
// Vault was sealed; the token is renewed.
func TestOrgCAKeysInVault(t *testing.T) {
	v := vaulttest.Start(t, "s.mastio-token", time.Minute)
	dir := workDir(t)
	tokenFile := filepath.Join(dir, "vault-token")
	writeFile(t, tokenFile, "s.mastio-token\n")
	os.Chmod(tokenFile, 0o600)
	s := exampleServer(t, "\t\tca_key_store vault {\n\t\t\taddress "+v.Addr()+"\n\t\t\ttoken_file "+tokenFile+"\n\t\t}\n", "")

	sec := v.Get("secret/mastio")
	if !strings.Contains(sec["org_ca_pem"].(string), "PRIVATE KEY") || !strings.Contains(sec["intermediate_pem"].(string), "PRIVATE KEY") {
		t.Fatalf("the secret holds %v", keysOf(sec))
	}
	for _, f := range []string{"org-ca.key", "intermediate.key"} {
		if _, err := os.Stat(filepath.Join(s.dataDir, "pki", f)); err == nil {
			t.Fatalf("%s is on disk", f)
		}
	}
	code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "before"})
	if code != 201 {
		t.Fatalf("create agent: %d %v", code, body)
	}
	agent := keyPair(t, body["cert_pem"].(string), body["private_key_pem"].(string))

	ready := func(want int, reason string) {
		t.Helper()
		waitFor(t, "/readyz "+reason, 20*time.Second, func() bool {
			code, _, body := s.get(s.client(), "/readyz")
			return code == want && strings.Contains(body, reason)
		})
	}
	issueRefused := func(reason string) {
		t.Helper()
		code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "refused"})
		if code != 503 || body["error"] != "key_store_unavailable" || !strings.Contains(body["message"].(string), reason) {
			t.Fatalf("issuing while %s: %d %v", reason, code, body)
		}
	}
	agentWorks := func() {
		t.Helper()
		if code, _, err := newAgentClient(s, agent, false).get(t, "/v1/agents/me"); err != nil || code != 200 {
			t.Fatalf("an enrolled agent: %d %v", code, err)
		}
	}

	// Trouble while running: /readyz says so, and clears by itself.
	v.Seal()
	ready(503, `"pki":"Vault is sealed"`)
	agentWorks()
	v.Unseal()
	ready(200, `"ready"`)
	v.Stop()
	ready(503, `"pki":"Vault is unreachable"`)
	v.Restart()
	ready(200, `"ready"`)
	fields := v.Get("secret/mastio")
	v.Put("secret/mastio", map[string]any{"intermediate_pem": fields["intermediate_pem"]})
	ready(503, `"pki":"Vault secret at 'secret/data/mastio' missing field 'org_ca_pem'"`)
	v.Put("secret/mastio", fields)
	ready(200, `"ready"`)
	v.Token = "s.rotated"
	ready(503, `"pki":"Vault refused the token"`)
	writeFile(t, tokenFile, "s.rotated\n") // Vault Agent wrote the new token
	os.Chmod(tokenFile, 0o600)
	ready(200, `"ready"`)

	// Started while Vault is sealed: it serves enrolled agents, issues
	// nothing, and recovers when Vault is unsealed.
	s.stop()
	v.Seal()
	s.start()
	ready(503, `"pki":"Vault is sealed"`)
	issueRefused("Vault is sealed")
	agentWorks()
	if !strings.Contains(s.out.String(), "Vault is sealed") {
		t.Fatal("the log does not say Vault is sealed")
	}
	v.Unseal()
	ready(200, `"ready"`)
	if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "after"}); code != 201 {
		t.Fatalf("issuing after the unseal: %d %v", code, body)
	}
	if v.Renewals() == 0 {
		t.Fatal("the gateway never renewed its token") // how often: vaultkeys' tests
	}
	if strings.Contains(s.out.String(), "s.rotated") || strings.Contains(s.out.String(), "PRIVATE KEY") {
		t.Fatal("a Vault token or key reached the log")
	}
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
