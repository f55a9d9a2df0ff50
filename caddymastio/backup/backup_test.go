package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"
)

func newDataDir(t *testing.T) string {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "pki"), 0o700))
	must(t, os.WriteFile(filepath.Join(dir, "pki", "org-ca.crt"), []byte("cert"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "pki", "org-ca.key"), []byte("key"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "mastio.db"), []byte("live db"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, ".pki.tmp-1"), []byte("half a write"), 0o600))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func snapshotOf(data string) func(context.Context, string) (Manifest, bool, error) {
	return func(_ context.Context, path string) (Manifest, bool, error) {
		return Manifest{Database: "sqlite", SchemaVersion: 6, OrgID: "orga"}, true, os.WriteFile(path, []byte(data), 0o600)
	}
}

func TestWriteThenExtractRoundTrips(t *testing.T) {
	dir := newDataDir(t)
	id, _ := age.GenerateX25519Identity()
	var buf bytes.Buffer
	man, err := Write(context.Background(), &buf, Source{DataDir: dir, Skip: func(n string) bool { return n == "mastio.db" },
		Snapshot: snapshotOf("snapshot"), Config: map[string][]byte{"app.json": []byte("{}")}, Version: "v1"}, id.Recipient())
	must(t, err)
	if bytes.Contains(buf.Bytes(), []byte("key")) && bytes.Contains(buf.Bytes(), []byte("snapshot")) {
		t.Fatal("plaintext in the archive")
	}
	names := []string{}
	for _, f := range man.Files {
		names = append(names, f.Name)
	}
	if got := strings.Join(names, " "); got != "database/mastio.db data/pki/org-ca.crt data/pki/org-ca.key config/app.json" {
		t.Fatalf("entries: %s", got)
	}
	dest := t.TempDir()
	got, err := Extract(bytes.NewReader(buf.Bytes()), dest, id)
	must(t, err)
	if got.OrgID != "orga" || got.SchemaVersion != 6 || got.Format != Format || len(got.Files) != 4 {
		t.Fatalf("manifest: %+v", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dest, "database", "mastio.db")); string(b) != "snapshot" {
		t.Fatalf("the database entry is %q, want the snapshot (not the live file)", b)
	}
	if fi, _ := os.Stat(filepath.Join(dest, "data", "pki", "org-ca.key")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", fi.Mode())
	}
}

func TestWriteStartsAgainWhenTheFilesChangeDuringTheSnapshot(t *testing.T) {
	dir := newDataDir(t)
	id, _ := age.GenerateX25519Identity()
	snaps := 0
	snap := func(_ context.Context, path string) (Manifest, bool, error) {
		snaps++
		if snaps == 1 { // a key rotates while the first snapshot is taken
			os.WriteFile(filepath.Join(dir, "pki", "org-ca.key"), []byte("rotated"), 0o600)
		}
		return Manifest{Database: "sqlite"}, true, os.WriteFile(path, []byte("db"), 0o600)
	}
	var buf bytes.Buffer
	_, err := Write(context.Background(), &buf, Source{DataDir: dir, Snapshot: snap}, id.Recipient())
	must(t, err)
	if snaps != 2 {
		t.Fatalf("%d snapshots, want 2", snaps)
	}
	dest := t.TempDir()
	_, err = Extract(&buf, dest, id)
	must(t, err)
	if b, _ := os.ReadFile(filepath.Join(dest, "data", "pki", "org-ca.key")); string(b) != "rotated" {
		t.Fatalf("key %q", b)
	}
}

func TestWriteRefusesNoRecipient(t *testing.T) {
	if _, err := Write(context.Background(), &bytes.Buffer{}, Source{DataDir: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "never written unencrypted") {
		t.Fatalf("err = %v", err)
	}
}

// archive encrypts a hand-made tar: what an attacker with the recipient's
// public key (or a bug) could produce.
func archive(t *testing.T, r age.Recipient, entries map[string]string, order []string) []byte {
	var tb bytes.Buffer
	gz := gzip.NewWriter(&tb)
	tw := tar.NewWriter(gz)
	for _, name := range order {
		body := entries[name]
		must(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg}))
		tw.Write([]byte(body))
	}
	tw.Close()
	gz.Close()
	var out bytes.Buffer
	w, _ := age.Encrypt(&out, r)
	w.Write(tb.Bytes())
	w.Close()
	return out.Bytes()
}

func manifestJSON(files ...File) string {
	b, _ := json.Marshal(Manifest{Format: Format, Files: files})
	return string(b)
}

func TestExtractRefusesWhatTheManifestDoesNotVouchFor(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	// sha256("cert")
	const certSum = "4a1d2a5e1e9f5b1c0a0a8b1a6f1b1e8e" // deliberately wrong
	cases := map[string]struct {
		entries map[string]string
		order   []string
		want    string
	}{
		"checksum": {map[string]string{"data/a": "x", ManifestName: manifestJSON(File{Name: "data/a", Size: 1, Mode: 0o600, SHA256: certSum})},
			[]string{"data/a", ManifestName}, "checksum mismatch: data/a"},
		"extra file": {map[string]string{"data/a": "x", "data/b": "y", ManifestName: manifestJSON(File{Name: "data/a", Size: 1, Mode: 0o600,
			SHA256: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"})},
			[]string{"data/a", "data/b", ManifestName}, "lists 1 files, the archive holds 2"},
		"no manifest":   {map[string]string{"data/a": "x"}, []string{"data/a"}, "has no manifest"},
		"traversal":     {map[string]string{"data/../../etc/passwd": "x"}, []string{"data/../../etc/passwd"}, "never does"},
		"absolute":      {map[string]string{"/etc/passwd": "x"}, []string{"/etc/passwd"}, "never does"},
		"after the end": {map[string]string{ManifestName: manifestJSON(), "data/a": "x"}, []string{ManifestName, "data/a"}, "after its manifest"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			dest := t.TempDir()
			_, err := Extract(bytes.NewReader(archive(t, id.Recipient(), c.entries, c.order)), dest, id)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			if _, serr := os.Stat(filepath.Join(dest, "..", "..", "etc", "passwd")); serr == nil && name == "traversal" {
				t.Fatal("an entry escaped the destination")
			}
		})
	}
}

func TestExtractRefusesAWrongPassphrase(t *testing.T) {
	r, _ := age.NewScryptRecipient("correct horse battery staple")
	r.SetWorkFactor(10)
	var buf bytes.Buffer
	_, err := Write(context.Background(), &buf, Source{DataDir: newDataDir(t), Snapshot: snapshotOf("db")}, r)
	must(t, err)
	wrong, _ := age.NewScryptIdentity("incorrect horse battery staple")
	if _, err := Extract(bytes.NewReader(buf.Bytes()), t.TempDir(), wrong); err == nil || !strings.Contains(err.Error(), "cannot be decrypted") {
		t.Fatalf("err = %v", err)
	}
	right, _ := age.NewScryptIdentity("correct horse battery staple")
	if _, err := Extract(bytes.NewReader(buf.Bytes()), t.TempDir(), right); err != nil {
		t.Fatal(err)
	}
}
