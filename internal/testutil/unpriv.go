// Package testutil holds helpers shared by the tests of several packages.
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// NobodyUID is the uid/gid tests drop to when they must run unprivileged.
const NobodyUID = 65534

// RerunUnprivileged runs the calling test again in a copy of the test
// binary as user nobody, and fails t if that run fails. Tests whose
// behaviour depends on file permissions call it when running as root,
// because root ignores file modes. TMPDIR of the child is a fresh directory
// nobody owns.
func RerunUnprivileged(t *testing.T) {
	t.Helper()
	dir, err := os.MkdirTemp("", "mastio-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "test.bin")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tmp, NobodyUID, NobodyUID); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+t.Name()+"$", "-test.v")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "HOME="+tmp, "GOCACHE="+tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: NobodyUID, Gid: NobodyUID}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged run of %s failed: %v\n%s", t.Name(), err, out)
	}
	t.Logf("ran as uid %d:\n%s", NobodyUID, out)
}
