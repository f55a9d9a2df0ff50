package mastio

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

// A backup taken by a newer release (a schema this binary does not know)
// is refused by name before anything is written.
func TestRestoreRefusesANewerSchema(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "admin-secret"), []byte("s\n"), 0o600)
	id, _ := age.GenerateX25519Identity()
	var buf bytes.Buffer
	newer := sqlite.LatestVersion() + 1
	_, err := backup.Write(context.Background(), &buf, backup.Source{DataDir: src, Version: "v9.9.9",
		Snapshot: func(_ context.Context, path string) (backup.Manifest, bool, error) {
			return backup.Manifest{Database: "sqlite", SchemaVersion: newer}, true, os.WriteFile(path, []byte("db"), 0o600)
		}}, id.Recipient())
	if err != nil {
		t.Fatal(err)
	}
	parent := t.TempDir()
	_, err = Restore(context.Background(), RestoreOptions{Archive: &buf, Identities: []age.Identity{id}, DataDir: filepath.Join(parent, "data")})
	if err == nil || !strings.Contains(err.Error(), "schema version") || !strings.Contains(err.Error(), "v9.9.9") {
		t.Fatalf("err = %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Fatalf("a refused restore left %v", entries)
	}
}
