package mastio

import (
	"context"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m.Run)) }

// instance starts a Mastio on db with data directory dir, as a Caddy
// instance would.
func instance(t *testing.T, dir string, db Database) *Mastio {
	t.Helper()
	s, err := Prepare(Location{DataDir: dir, Database: db}, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	secret, _ := NewSecret("3f9c2a7d41b8e6054c1d9a2f7e8b3c61")
	m, err := s.With(Settings{AdminSecret: secret}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	return m
}

// within waits (at most 5 s from start) for cond and returns how long
// after start it held.
func within(t *testing.T, what string, start time.Time, cond func() bool) time.Duration {
	t.Helper()
	for !cond() {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestChangesReachTheOtherInstance: two instances on one Postgres
// database. An agent created on A is known on B; a revocation on B is in
// force on A — its open requests told — within the feed's delay; a
// policy change and a signing key rotation on A apply on B.
func TestChangesReachTheOtherInstance(t *testing.T) {
	db := Database(pgtest.Database(t))
	dir := t.TempDir()
	a := instance(t, dir, db)
	b := instance(t, dir, db)
	ctx := context.Background()

	t0 := time.Now()
	iss, err := a.CreateAgent(ctx, registry.NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	id := iss.Agent.AgentID
	known := within(t, "the agent on B", t0, func() bool { _, ok := b.Registry().Lookup(id); return ok })

	told := make(chan string, 4)
	a.OnAgentChange(func(agent string) { told <- agent })
	t0 = time.Now()
	if _, err := b.Registry().Revoke(ctx, id, "stolen", "admin", nil); err != nil {
		t.Fatal(err)
	}
	revoked := within(t, "the revocation on A", t0, func() bool { _, ok := a.Registry().Lookup(id); return !ok })
	select {
	case got := <-told:
		if got != id {
			t.Fatalf("A told of %s, want %s", got, id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("A's open requests of the agent were not told")
	}
	if revoked > time.Second {
		t.Errorf("the revocation took %s to reach A, more than 1s", revoked)
	}

	t0 = time.Now()
	if _, err := a.SetPolicy(ctx, "allow * tools/call weather/get_forecast\n", nil); err != nil {
		t.Fatal(err)
	}
	policy := within(t, "the policy on B", t0, func() bool {
		rules := b.PolicyRules()
		return len(rules) > 0 && strings.Contains(rules[len(rules)-1].Resource, "weather/get_forecast")
	})
	t0 = time.Now()
	rot, err := a.RotateSigningKey(ctx, time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	keys := within(t, "the new signing key on B", t0, func() bool {
		for _, k := range b.SigningKeys() {
			if k.Kid == rot.NewKid && k.Status == "active" {
				return true
			}
		}
		return false
	})
	t.Logf("from the call on one instance to the change in force on the other: agent created %s, revoked %s, policy %s, signing key %s", known, revoked, policy, keys)
}

// sharedInstance starts an instance of a shared deployment: its own data
// directory, the shared database and key-encryption key.
func sharedInstance(t *testing.T, db Database, kek []byte, plain ...string) (*Mastio, string, error) {
	dir := t.TempDir()
	s, err := Prepare(Location{DataDir: dir, Database: db, KEK: kek}, "", zap.NewNop())
	if err != nil {
		return nil, dir, err
	}
	t.Cleanup(func() { s.Close() })
	if len(plain) == 0 {
		plain = []string{"3f9c2a7d41b8e6054c1d9a2f7e8b3c61"}
	}
	secret, err := s.AdminSecretOf(plain[0])
	if err != nil {
		return nil, dir, err
	}
	m, err := s.With(Settings{AdminSecret: secret}, zap.NewNop())
	if err == nil {
		err = m.Start(context.Background(), nil)
	}
	return m, dir, err
}

// TestSharedDeploymentOneCAKeysSealed: two instances with data
// directories of their own start at once on one database: they make one
// Org CA, no private key lands on either disk, a signing key one rotates
// the other signs with, and an instance with another key-encryption key
// is refused.
func TestSharedDeploymentOneCAKeysSealed(t *testing.T) {
	db := Database(pgtest.Database(t))
	kek := make([]byte, 32)
	rand.Read(kek)
	type started struct {
		m   *Mastio
		dir string
		err error
	}
	results := make(chan started, 2)
	for range 2 {
		go func() { m, dir, err := sharedInstance(t, db, kek); results <- started{m, dir, err} }()
	}
	a, b := <-results, <-results
	if a.err != nil || b.err != nil {
		t.Fatalf("start: %v / %v", a.err, b.err)
	}
	if pki.Fingerprint(a.m.CA().Root()) != pki.Fingerprint(b.m.CA().Root()) || a.m.OrgID() != b.m.OrgID() {
		t.Fatal("two instances starting at once made two Org CAs")
	}
	for _, dir := range []string{a.dir, b.dir} {
		filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".key") || strings.Contains(p, "signing-")) {
				t.Errorf("a private key on disk: %s", p)
			}
			return nil
		})
	}
	rot, err := a.m.RotateSigningKey(context.Background(), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	within(t, "B signing with A's new key", time.Now(), func() bool {
		k := b.m.keys.Active()
		return k != nil && k.Kid == rot.NewKid
	})
	if _, err := b.m.keys.Mint(token.Claims{Subject: "x", Expiry: time.Now().Add(time.Minute).Unix()}); err != nil {
		t.Fatalf("B cannot sign with the shared key: %v", err)
	}
	other := make([]byte, 32)
	rand.Read(other)
	if _, _, err := sharedInstance(t, db, other); err == nil || !strings.Contains(err.Error(), "cannot be opened with this key_encryption_key_file") {
		t.Fatalf("an instance with another key: %v", err)
	}
}

// The admin secret is the deployment's: an instance started with a new
// one (a rotation) makes every instance accept it and refuse the old.
func TestSharedAdminSecretRotates(t *testing.T) {
	db := Database(pgtest.Database(t))
	kek := make([]byte, 32)
	rand.Read(kek)
	const old, rotated = "old-secret-0123456789abcdef0123456789", "new-secret-0123456789abcdef0123456789"
	a, _, err := sharedInstance(t, db, kek, old)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := sharedInstance(t, db, kek, old)
	if err != nil {
		t.Fatal(err)
	}
	ok := func(m *Mastio, secret string) bool {
		return m.CheckAdminSecret(context.Background(), "127.0.0.1", "GET", "/v1/admin/agents", secret).OK
	}
	if !ok(a, old) || !ok(b, old) {
		t.Fatal("the deployment's secret is refused")
	}
	if _, _, err := sharedInstance(t, db, kek, rotated); err != nil {
		t.Fatal(err)
	}
	within(t, "the rotated secret on A and B", time.Now(), func() bool { return ok(a, rotated) && ok(b, rotated) })
	if ok(a, old) || ok(b, old) {
		t.Fatal("the old secret still works after the rotation")
	}
	n := 0
	audit.Read(context.Background(), a.store, 1, 0, func(r audit.Record) error {
		if r.Type == "admin.secret_changed" {
			n++
		}
		return nil
	})
	if n != 2 {
		t.Fatalf("%d admin.secret_changed rows, want 2 (first start, rotation)", n)
	}
}

// TestSharedStartWritesCertificatesAtomically: each start of a shared
// instance lays the database's certificates into its pki/ directory. One
// already right is left alone, and a stale one is replaced by a rename,
// never truncated in place: a reader (the operator's tooling, a test
// waiting for org-ca.crt) must never find it empty.
func TestSharedStartWritesCertificatesAtomically(t *testing.T) {
	db := Database(pgtest.Database(t))
	kek := make([]byte, 32)
	rand.Read(kek)
	dir := t.TempDir()
	loc := Location{DataDir: dir, Database: db, KEK: kek}
	s, err := Prepare(loc, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	rootPath := filepath.Join(dir, "pki", pki.RootCertFile)
	interPath := filepath.Join(dir, "pki", pki.IntermediateCertFile)
	rootBefore, _ := os.Stat(rootPath)
	interPEM, err := os.ReadFile(interPath)
	if err != nil {
		t.Fatal(err)
	}
	stale, _ := os.ReadFile(rootPath) // a certificate, but not the intermediate
	if err := os.WriteFile(interPath, stale, 0o644); err != nil {
		t.Fatal(err)
	}
	staleInter, _ := os.Stat(interPath)

	s, err = Prepare(loc, "", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if rootAfter, _ := os.Stat(rootPath); !os.SameFile(rootBefore, rootAfter) || !rootAfter.ModTime().Equal(rootBefore.ModTime()) {
		t.Error("a restart rewrote org-ca.crt, which had not changed")
	}
	interAfter, _ := os.Stat(interPath)
	if got, _ := os.ReadFile(interPath); string(got) != string(interPEM) {
		t.Fatal("the stale intermediate.crt was not replaced by the database's")
	}
	if os.SameFile(staleInter, interAfter) {
		t.Error("intermediate.crt was rewritten in place (a reader could find it empty), not renamed into place")
	}
}
