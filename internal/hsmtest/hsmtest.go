// Package hsmtest makes a SoftHSM token for a test: Debian's softhsm2 is
// the HSM behind the pkcs11 key store's tests.
package hsmtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/internal/testutil"
)

// Module is SoftHSM's PKCS#11 library as Debian installs it.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

// Token is a fresh token.
type Token struct {
	Label, PIN string
	// Conf is the SoftHSM configuration naming the token's directory; a
	// process finds the token through SOFTHSM2_CONF=Conf (Env).
	Conf string
	// Dir holds the token's files.
	Dir string
}

// Env is the environment entry that points SoftHSM at the token.
func (t Token) Env() string { return "SOFTHSM2_CONF=" + t.Conf }

// New initialises a token labelled label in a temporary directory and
// points this process at it. The directory is owned by the unprivileged
// test user when the tests run as root, so that a server dropped to it can
// use the token.
func New(t testing.TB, label string) Token {
	t.Helper()
	if _, err := os.Stat(Module); err != nil {
		t.Fatalf("SoftHSM is not installed (%v): apt-get install softhsm2", err)
	}
	dir, err := os.MkdirTemp("", "mastio-hsm-") // not t.TempDir: its parent is 0700, closed to the server's user
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	tok := Token{Label: label, PIN: "2718281828", Conf: filepath.Join(dir, "softhsm2.conf"), Dir: filepath.Join(dir, "tokens")}
	if err := os.MkdirAll(tok.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := "directories.tokendir = " + tok.Dir + "\nobjectstore.backend = file\nlog.level = ERROR\n"
	if err := os.WriteFile(tok.Conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--pin", tok.PIN, "--so-pin", "3141592653")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	if os.Geteuid() == 0 {
		os.Chmod(dir, 0o755)
		filepath.Walk(tok.Dir, func(p string, _ os.FileInfo, _ error) error {
			return os.Chown(p, testutil.NobodyUID, testutil.NobodyUID)
		})
	}
	return tok
}
