package vaultkeys

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/internal/vaulttest"
)

func newStore(t *testing.T, v *vaulttest.Vault, tokenFile string) *Store {
	t.Helper()
	s, err := New(Config{Address: v.Addr(), TokenFile: tokenFile, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func tokenFile(t *testing.T, token string) string {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func wantUnavailable(t *testing.T, err error, reason string) {
	t.Helper()
	ue := pki.Unavailable(err)
	if ue == nil || ue.Reason != reason {
		t.Fatalf("err = %v, want the key store unavailable with %q", err, reason)
	}
}

func TestKeysGoToTheRunbooksFieldsAndOtherFieldsStay(t *testing.T) {
	v := vaulttest.Start(t, "tok", 0)
	s := newStore(t, v, tokenFile(t, "tok"))
	_, err := s.Load(pki.RootKeyName)
	wantUnavailable(t, err, "Vault secret at 'secret/data/mastio' missing field 'org_ca_pem'")
	if !pki.IsNotExist(err) {
		t.Fatal("a missing field must also read as no key (a first start creates the CA)")
	}
	v.Put("secret/mastio", map[string]any{"note": "kept"})
	if err := s.Store(pki.RootKeyName, []byte("ROOT PEM")); err != nil {
		t.Fatal(err)
	}
	if err := s.Store(pki.IntermediateKeyName, []byte("INTER PEM")); err != nil {
		t.Fatal(err)
	}
	got := v.Get("secret/mastio")
	if got["org_ca_pem"] != "ROOT PEM" || got["intermediate_pem"] != "INTER PEM" || got["note"] != "kept" {
		t.Fatalf("secret: %v", got)
	}
	if b, err := s.Load(pki.IntermediateKeyName); err != nil || string(b) != "INTER PEM" {
		t.Fatalf("Load = %q, %v", b, err)
	}
	if _, err := s.Load("token-signing.key"); err == nil {
		t.Fatal("Vault holds only the CA keys")
	}
}

func TestVaultsTroublesReadAsTheRunbookSays(t *testing.T) {
	v := vaulttest.Start(t, "tok", 0)
	v.Put("secret/mastio", map[string]any{"org_ca_pem": "ROOT"})
	tf := tokenFile(t, "tok")
	s := newStore(t, v, tf)

	v.Seal()
	_, err := s.Load(pki.RootKeyName)
	wantUnavailable(t, err, "Vault is sealed")
	v.Unseal()

	v.Token = "rotated"
	_, err = s.Load(pki.RootKeyName)
	wantUnavailable(t, err, "Vault refused the token")
	os.WriteFile(tf, []byte("rotated\n"), 0o600) // Vault Agent wrote the new token
	if _, err := s.Load(pki.RootKeyName); err != nil {
		t.Fatalf("after the token file changed: %v", err)
	}

	v.Stop()
	_, err = s.Load(pki.RootKeyName)
	wantUnavailable(t, err, "Vault is unreachable")
	if strings.Contains(err.Error(), "rotated") {
		t.Fatal("the token is in an error")
	}
	v.Restart()
	if _, err := s.Load(pki.RootKeyName); err != nil {
		t.Fatalf("after Vault came back: %v", err)
	}
}

func TestTheTokenIsRenewedBeforeItExpires(t *testing.T) {
	v := vaulttest.Start(t, "tok", 2*time.Second)
	v.Put("secret/mastio", map[string]any{"org_ca_pem": "ROOT"})
	s := newStore(t, v, tokenFile(t, "tok"))
	start := time.Now()
	s.Renew()
	deadline := start.Add(20 * time.Second)
	// Past the token's first expiry by half its lifetime, with renewals.
	for time.Since(start) < 3*time.Second || v.Renewals() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d renewals", v.Renewals())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := s.Load(pki.RootKeyName); err != nil {
		t.Fatal(err)
	}
}
