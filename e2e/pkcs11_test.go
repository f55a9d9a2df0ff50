//go:build pkcs11

package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/internal/hsmtest"
)

func init() { buildTags = "pkcs11" }

// TestOrgCAKeysInAnHSM: a gateway built with the pkcs11 tag keeps the Org
// CA's and intermediate's keys in a SoftHSM token: no key file of theirs
// ever exists, agents get certificates the intermediate in the token
// signed, and a restart finds the same CA.
func TestOrgCAKeysInAnHSM(t *testing.T) {
	tok := hsmtest.New(t, "mastio")
	dir := workDir(t)
	pinFile := filepath.Join(dir, "hsm-pin")
	writeFile(t, pinFile, tok.PIN+"\n")
	os.Chmod(pinFile, 0o600)
	global := "\t\tca_key_store pkcs11 {\n\t\t\tmodule " + hsmtest.Module + "\n\t\t\ttoken_label " + tok.Label +
		"\n\t\t\tpin_file " + pinFile + "\n\t\t}\n"
	s := exampleServer(t, global, "", tok.Env())

	noKeyFiles := func() {
		t.Helper()
		filepath.Walk(s.dataDir, func(p string, fi os.FileInfo, err error) error {
			if err != nil || fi.IsDir() {
				return nil
			}
			data, _ := os.ReadFile(p)
			if strings.HasPrefix(p, filepath.Join(s.dataDir, "pki")) && (strings.HasSuffix(p, ".key") || strings.Contains(string(data), "PRIVATE KEY")) {
				t.Fatalf("%s: a CA key on disk", p)
			}
			return nil
		})
	}
	noKeyFiles()
	code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "hsm-signed"})
	if code != 201 {
		t.Fatalf("create agent: %d %v", code, body)
	}
	block, _ := pem.Decode([]byte(body["cert_pem"].(string)))
	leaf, _ := x509.ParseCertificate(block.Bytes)
	inter, err := os.ReadFile(filepath.Join(s.dataDir, "pki", "intermediate.crt"))
	if err != nil {
		t.Fatal(err)
	}
	ib, _ := pem.Decode(inter)
	ic, _ := x509.ParseCertificate(ib.Bytes)
	if err := leaf.CheckSignatureFrom(ic); err != nil {
		t.Fatalf("the agent certificate is not signed by the intermediate: %v", err)
	}
	agent := keyPair(t, body["cert_pem"].(string), body["private_key_pem"].(string))
	_, _, caBefore := s.get(s.client(), "/pki/ca.crt")

	s.stop()
	s.start()
	if _, _, ca := s.get(s.client(), "/pki/ca.crt"); ca != caBefore {
		t.Fatal("another Org CA after a restart")
	}
	if code, _, err := newAgentClient(s, agent, false).get(t, "/v1/agents/me"); err != nil || code != 200 {
		t.Fatalf("the agent after a restart: %d %v", code, err)
	}
	if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "after-restart"}); code != 201 {
		t.Fatalf("issuing after a restart: %d %v", code, body)
	}
	if code, _, body := s.get(s.client(), "/readyz"); code != 200 {
		t.Fatalf("/readyz: %d %s", code, body)
	}
	noKeyFiles()
	if strings.Contains(s.out.String(), tok.PIN) {
		t.Fatal("the PIN reached the log")
	}
}
