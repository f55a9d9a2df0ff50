package caddymastio

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

func TestAuditExportCommand(t *testing.T) {
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "audit.ndjson")
	cmd := auditCommand()
	cmd.SetArgs([]string{"export", "--db", a.dbPath, "--out", out, "--after-seq", "1", "--limit", "1"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var row audit.ExportRow
	if err := json.Unmarshal(data, &row); err != nil || row.Seq != 2 || strings.Count(string(data), "\n") != 1 {
		t.Fatalf("exported %q: %v", data, err)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Fatalf("the export file is %v, want 0600", fi.Mode())
	}
	// An existing file is not overwritten; a bad flag names itself.
	for args, want := range map[string]string{
		"--out " + out:      "exists",
		"--after-seq later": "--after-seq",
		"--format xml":      "--format",
	} {
		cmd := auditCommand()
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		cmd.SetArgs(append([]string{"export", "--db", a.dbPath}, strings.Fields(args)...))
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v", args, err)
		}
	}
}

func TestAuditVerifyCommandChecksABundle(t *testing.T) {
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.tar.gz")
	f, _ := os.Create(bundle)
	man, err := a.Mastio().AuditBundle(context.Background(), 1, 0, f, nil)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(a.DataDir, "pki", "org-ca.crt")
	witness := fmt.Sprintf("%d:%s", man.LastSeq, man.LastHash)
	if code := verifyBundleFile(bundle, ca, "", []string{witness}); code != 0 {
		t.Fatalf("a fresh bundle: exit %d", code)
	}
	wrong := fmt.Sprintf("%d:%s", man.LastSeq, strings.Repeat("ab", 32))
	if code := verifyBundleFile(bundle, ca, "", []string{wrong}); code != 1 {
		t.Fatalf("a wrong witness: exit %d, want 1", code)
	}
	for what, code := range map[string]int{
		"no such bundle": verifyBundleFile(filepath.Join(dir, "none.tar.gz"), ca, "", nil),
		"a bad witness":  verifyBundleFile(bundle, ca, "", []string{"seven"}),
		"not a bundle":   verifyBundleFile(ca, "", "", nil),
	} {
		if code != 2 {
			t.Errorf("%s: exit %d, want 2", what, code)
		}
	}
}
