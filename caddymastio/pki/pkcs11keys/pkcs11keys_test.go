//go:build pkcs11

package pkcs11keys

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/internal/hsmtest"
)

func open(t *testing.T, tok hsmtest.Token) *Store {
	t.Helper()
	s, err := Open(Config{Module: hsmtest.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTheCASignsThroughTheHSM: the Org CA made with a SoftHSM token has
// its keys there and nowhere else; it issues agent certificates that chain
// to its root; a new session (a restart) finds the same CA.
func TestTheCASignsThroughTheHSM(t *testing.T) {
	tok := hsmtest.New(t, "mastio-test")
	dir := t.TempDir()
	s := open(t, tok)
	ca, created, err := pki.LoadOrCreate(pki.Config{Dir: dir, Keys: s, Org: "orga"})
	if err != nil || !created.Root || !created.Intermediate {
		t.Fatalf("LoadOrCreate: %v %+v", err, created)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if strings.Contains(string(data), "PRIVATE KEY") || strings.HasSuffix(e.Name(), ".key") {
			t.Fatalf("%s is a key on disk", e.Name())
		}
	}
	if _, err := s.Load(pki.IntermediateKeyName); err == nil {
		t.Fatal("a key left the token")
	}
	agentKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issue := func(ca *pki.CA) *x509.Certificate {
		t.Helper()
		cert, err := ca.IssueAgent(pki.AgentCert{PublicKey: agentKey.Public(), Identity: pki.AgentIdentity{TrustDomain: "mastio.local", Org: "orga", Name: "a"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: ca.IntermediatePool(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("the agent certificate does not chain to the root: %v", err)
		}
		return cert
	}
	issue(ca)
	s.Close()

	s2 := open(t, tok)
	defer s2.Close()
	again, created, err := pki.LoadOrCreate(pki.Config{Dir: dir, Keys: s2, Org: "orga"})
	if err != nil || created.Root || created.Intermediate {
		t.Fatalf("reopening: %v %+v", err, created)
	}
	if pki.Fingerprint(again.Root()) != pki.Fingerprint(ca.Root()) {
		t.Fatal("another root after reopening")
	}
	issue(again)
	if err := again.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// A token that does not exist, or a wrong PIN, fails with a message that
// names the token and not the PIN.
func TestAWrongPINIsRefusedWithoutShowingIt(t *testing.T) {
	tok := hsmtest.New(t, "mastio-pin")
	_, err := Open(Config{Module: hsmtest.Module, TokenLabel: tok.Label, PIN: "0000000000"})
	if err == nil || !strings.Contains(err.Error(), `token "mastio-pin"`) || strings.Contains(err.Error(), "0000000000") {
		t.Fatalf("err = %v", err)
	}
}
