package token

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/internal/testdb"
)

func TestKeyRingCreatesOneActiveKeyAndReloadsIt(t *testing.T) {
	dir := t.TempDir()
	st, _ := testdb.OpenSQLite(t)
	log := audit.Open(st, audit.Options{})
	defer log.Close()
	ks := pki.FileKeyStore{Dir: filepath.Join(dir, "keys")}
	ring, created, err := OpenKeyRing(context.Background(), st, log, ks)
	if err != nil || created == nil {
		t.Fatalf("first open: created=%v err=%v", created, err)
	}
	if ring.Active().Kid != created.Kid || len(created.Kid) != 43 {
		t.Fatalf("kid %q", created.Kid)
	}
	if err := ring.Check(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "keys", "signing-"+created.Kid+".key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	again, created2, err := OpenKeyRing(context.Background(), st, log, ks)
	if err != nil || created2 != nil || again.Active().Kid != created.Kid {
		t.Fatalf("second open: %v %v", created2, err)
	}
	os.Remove(filepath.Join(dir, "keys", "signing-"+created.Kid+".key"))
	if err := ring.Check(); err == nil || !strings.Contains(err.Error(), created.Kid) {
		t.Fatalf("check with the key file gone: %v", err)
	}
}
