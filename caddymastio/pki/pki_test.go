package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newCA(t *testing.T) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, created, err := LoadOrCreate(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if !created.Root || !created.Intermediate {
		t.Fatalf("first start created %+v", created)
	}
	return ca, dir
}

func TestRootAndIntermediateProfiles(t *testing.T) {
	ca, _ := newCA(t)
	root, inter := ca.Root(), ca.Intermediate()
	if !root.IsCA || root.MaxPathLen != 1 || root.MaxPathLenZero {
		t.Errorf("root: IsCA=%v MaxPathLen=%d", root.IsCA, root.MaxPathLen)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate: IsCA=%v MaxPathLen=%d zero=%v", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
	}
	for name, c := range map[string]*x509.Certificate{"root": root, "intermediate": inter} {
		k, ok := c.PublicKey.(*ecdsa.PublicKey)
		if !ok || k.Curve != elliptic.P256() {
			t.Errorf("%s key is %T, want EC P-256", name, c.PublicKey)
		}
		if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
			t.Errorf("%s key usage %v", name, c.KeyUsage)
		}
		if len(c.SubjectKeyId) == 0 {
			t.Errorf("%s has no SKI", name)
		}
	}
	years := func(c *x509.Certificate) float64 { return c.NotAfter.Sub(c.NotBefore).Hours() / 24 / 365 }
	if y := years(root); y < 14.9 || y > 15.1 {
		t.Errorf("root lifetime %.2f years", y)
	}
	if y := years(inter); y < 4.9 || y > 5.1 {
		t.Errorf("intermediate lifetime %.2f years", y)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		t.Error(err)
	}
	if string(inter.AuthorityKeyId) != string(root.SubjectKeyId) {
		t.Error("intermediate AKI does not name the root")
	}
	if got := DeriveOrgID(root); len(got) != 16 || root.Subject.Organization[0] != got {
		t.Errorf("derived org id %q, root O=%v", got, root.Subject.Organization)
	}
}

func TestKeyAndCertFileModes(t *testing.T) {
	_, dir := newCA(t)
	for _, f := range []string{RootKeyName, IntermediateKeyName} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", f, fi.Mode().Perm())
		}
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("pki dir mode %04o, want 0700", fi.Mode().Perm())
	}
	// Nothing in the directory holds a private key except the .key files.
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		if strings.Contains(string(data), "PRIVATE KEY") && !strings.HasSuffix(e.Name(), ".key") {
			t.Errorf("%s contains a private key", e.Name())
		}
	}
}

func TestReloadKeepsTheSameCA(t *testing.T) {
	ca, dir := newCA(t)
	again, created, err := LoadOrCreate(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if created.Root || created.Intermediate {
		t.Fatalf("second load created %+v", created)
	}
	if Fingerprint(again.Root()) != Fingerprint(ca.Root()) || Fingerprint(again.Intermediate()) != Fingerprint(ca.Intermediate()) {
		t.Fatal("CA changed across loads")
	}
}

func TestConcurrentFirstStartsMakeOneRoot(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	var wg sync.WaitGroup
	fps := make(chan string, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ca, _, err := LoadOrCreate(Config{Dir: dir})
			if err != nil {
				t.Error(err)
				return
			}
			fps <- Fingerprint(ca.Root())
		}()
	}
	wg.Wait()
	close(fps)
	first := ""
	for fp := range fps {
		if first == "" {
			first = fp
		} else if fp != first {
			t.Fatal("two different roots were generated")
		}
	}
}

func TestHalfRestoredCAIsRefused(t *testing.T) {
	_, dir := newCA(t)
	os.Rename(filepath.Join(dir, RootKeyName), filepath.Join(dir, "aside"))
	if _, _, err := LoadOrCreate(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "restore both") {
		t.Fatalf("root cert without key: %v", err)
	}
	os.Rename(filepath.Join(dir, "aside"), filepath.Join(dir, RootKeyName))
	os.Rename(filepath.Join(dir, RootCertFile), filepath.Join(dir, "aside"))
	if _, _, err := LoadOrCreate(Config{Dir: dir}); err == nil || !strings.Contains(err.Error(), "restore both") {
		t.Fatalf("root key without cert: %v", err)
	}
}

func TestLooseKeyModeIsRefused(t *testing.T) {
	_, dir := newCA(t)
	os.Chmod(filepath.Join(dir, IntermediateKeyName), 0o644)
	_, _, err := LoadOrCreate(Config{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("got %v", err)
	}
}

func TestIntermediateRenewsNearExpiryAndOldStaysTrusted(t *testing.T) {
	ca, dir := newCA(t)
	old := ca.Intermediate()
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	oldLeaf, err := ca.IssueAgent(AgentCert{PublicKey: leafKey.Public(), Identity: AgentIdentity{"mastio.local", "org", "a"}})
	if err != nil {
		t.Fatal(err)
	}
	later := func() time.Time { return old.NotAfter.Add(-IntermediateRenewBefore / 2) }
	ca2, created, err := LoadOrCreate(Config{Dir: dir, Now: later})
	if err != nil {
		t.Fatal(err)
	}
	if !created.Intermediate || created.Root {
		t.Fatalf("created %+v, want a new intermediate only", created)
	}
	if Fingerprint(ca2.Intermediate()) == Fingerprint(old) {
		t.Fatal("intermediate not replaced")
	}
	live := ca2.Intermediates()
	if len(live) != 2 || Fingerprint(live[1]) != Fingerprint(old) {
		t.Fatalf("live intermediates %d, want the new and the old", len(live))
	}
	_, err = oldLeaf.Verify(x509.VerifyOptions{Roots: ca2.RootPool(), Intermediates: ca2.IntermediatePool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatalf("leaf from the old intermediate no longer verifies: %v", err)
	}
	// And a restart sees both.
	ca3, created, err := LoadOrCreate(Config{Dir: dir, Now: later})
	if err != nil || created.Intermediate || len(ca3.Intermediates()) != 2 {
		t.Fatalf("restart: %v %+v %d", err, created, len(ca3.Intermediates()))
	}
}

func TestServerCertificate(t *testing.T) {
	ca, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := ca.IssueServer(ServerCert{PublicKey: key.Public(), DNSNames: []string{"localhost", "mastio.example"}, IPs: []string{"127.0.0.1", "::1"}})
	if err != nil {
		t.Fatal(err)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{DNSName: "mastio.example", Roots: ca.RootPool(), Intermediates: ca.IntermediatePool()})
	if err != nil || len(chains[0]) != 3 {
		t.Fatalf("verify: %v", err)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.IsCA {
		t.Errorf("EKU %v IsCA %v", leaf.ExtKeyUsage, leaf.IsCA)
	}
	if len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal([]byte{127, 0, 0, 1}) {
		t.Errorf("IPs %v", leaf.IPAddresses)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("lifetime %v, want 1 year", d)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: ca.IntermediatePool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("server certificate is usable for client auth")
	}
	if _, err := ca.IssueServer(ServerCert{PublicKey: key.Public()}); err == nil {
		t.Error("server certificate without names was issued")
	}
}

func TestAgentCertificate(t *testing.T) {
	ca, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := AgentIdentity{TrustDomain: "mastio.local", Org: "acme", Name: "billing-bot"}
	leaf, err := ca.IssueAgent(AgentCert{PublicKey: key.Public(), Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.RootPool(), Intermediates: ca.IntermediatePool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://mastio.local/acme/billing-bot" {
		t.Fatalf("URI SANs %v", leaf.URIs)
	}
	if leaf.Subject.CommonName != "acme::billing-bot" {
		t.Errorf("CN %q", leaf.Subject.CommonName)
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("EKU %v", leaf.ExtKeyUsage)
	}
	got, err := AgentIdentityFromCert(leaf)
	if err != nil || got != id {
		t.Fatalf("identity %+v %v", got, err)
	}
	chain, err := ParseCertificatesPEM(ca.ChainPEM(leaf))
	if err != nil || len(chain) != 2 || Fingerprint(chain[1]) != Fingerprint(ca.Intermediate()) {
		t.Fatalf("chain PEM: %v %d", err, len(chain))
	}
	// A leaf never outlives its intermediate.
	long, _ := ca.IssueAgent(AgentCert{PublicKey: key.Public(), Identity: id, Lifetime: 100 * 365 * 24 * time.Hour})
	if long.NotAfter.After(ca.Intermediate().NotAfter) {
		t.Error("leaf outlives the intermediate")
	}
}

func TestLeafRequestValidation(t *testing.T) {
	ca, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	bad := []AgentCert{
		{PublicKey: key.Public(), Identity: AgentIdentity{"mastio.local", "acme", "has space"}},
		{PublicKey: key.Public(), Identity: AgentIdentity{"mastio.local", "acme", ".."}},
		{PublicKey: key.Public(), Identity: AgentIdentity{"Upper.Case", "acme", "a"}},
		{PublicKey: key.Public(), Identity: AgentIdentity{"mastio.local", "ac/me", "a"}},
		{PublicKey: key.Public(), Identity: AgentIdentity{"mastio.local", "acme", strings.Repeat("a", 65)}},
		{PublicKey: small.Public(), Identity: AgentIdentity{"mastio.local", "acme", "a"}},
	}
	for _, req := range bad {
		if _, err := ca.IssueAgent(req); err == nil {
			t.Errorf("%+v: issued", req.Identity)
		}
	}
}

func TestAgentIDParsing(t *testing.T) {
	if org, name, err := ParseAgentID("acme::bot-1"); err != nil || org != "acme" || name != "bot-1" {
		t.Fatal(org, name, err)
	}
	for _, bad := range []string{"acme", "acme::", "::bot", "acme::b/t", "a::b::c"} {
		if _, _, err := ParseAgentID(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestPrepareWritesNothing: Prepare generates a first CA in memory only;
// Persist writes it, and refuses if another process wrote a root first.
func TestPrepareWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, created, err := Prepare(Config{Dir: dir, Org: "acme"})
	if err != nil || !created.Root || !created.Intermediate || ca.Root() == nil || ca.Intermediate() == nil {
		t.Fatalf("%v %+v", err, created)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("Prepare wrote %s: %v", dir, err)
	}
	if err := ca.Persist(); err != nil {
		t.Fatal(err)
	}
	again, created, err := Prepare(Config{Dir: dir})
	if err != nil || created.Root || created.Intermediate || Fingerprint(again.Root()) != Fingerprint(ca.Root()) {
		t.Fatalf("after Persist: %v %+v", err, created)
	}
	other, _, _ := Prepare(Config{Dir: dir + "2"})
	os.MkdirAll(dir+"2", 0o700)
	os.WriteFile(filepath.Join(dir+"2", RootCertFile), ca.RootPEM(), 0o644)
	if err := other.Persist(); err == nil || !strings.Contains(err.Error(), "meanwhile") {
		t.Fatalf("a second root over the first: %v", err)
	}
}
