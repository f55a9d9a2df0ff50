package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestXcaddyBuildHasTheSameModules builds Caddy the way a user does with
// xcaddy, from xcaddy.json's version and plugin, and checks that the
// result has exactly the modules of cmd/caddy.
func TestXcaddyBuildHasTheSameModules(t *testing.T) {
	var manifest struct {
		CaddyVersion string `json:"caddy_version"`
		Plugins      []struct {
			ModulePath string `json:"module_path"`
		} `json:"plugins"`
	}
	data, err := os.ReadFile(filepath.Join(repoRoot, "xcaddy.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &manifest); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "caddy-xcaddy")
	cmd := exec.Command("go", "run", "github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5",
		"build", manifest.CaddyVersion,
		"--with", manifest.Plugins[0].ModulePath+"="+repoRoot,
		"--output", out)
	cmd.Dir = t.TempDir()
	// xcaddy's default flags (-trimpath, build tags) would miss the build
	// cache of the rest of the suite and cost a cold build; the set of
	// registered modules does not depend on them.
	cmd.Env = append(os.Environ(), "XCADDY_GO_BUILD_FLAGS=-ldflags=-w", "GOPROXY="+proxyWithNotFoundFallback(t))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xcaddy build: %v\n%s", err, b)
	}
	got, want := listModules(t, out), listModules(t, caddyBin)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("xcaddy build modules differ from cmd/caddy:\nxcaddy: %v\ncmd/caddy: %v", got, want)
	}
	for _, m := range ourModules {
		found := false
		for _, g := range got {
			found = found || g == m
		}
		if !found {
			t.Errorf("xcaddy build lacks %s", m)
		}
	}
	if v, err := exec.Command(out, "version").CombinedOutput(); err != nil || !strings.Contains(string(v), manifest.CaddyVersion) {
		t.Errorf("xcaddy build version: %s %v", v, err)
	}
}

// proxyWithNotFoundFallback returns the go command's GOPROXY with an empty
// file:// proxy appended after "|". xcaddy runs `go get` on the plugin's
// own module path; for a module that is not published (a local checkout,
// as here) proxy.golang.org answers 404 and the go command falls back to
// the local replacement. Some proxies, such as the one CI uses, answer 403
// instead, which the go command treats as fatal; the empty proxy turns
// that into the 404 every user's build sees.
func proxyWithNotFoundFallback(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOPROXY").Output()
	if err != nil {
		t.Fatal(err)
	}
	var proxies []string
	for _, p := range strings.FieldsFunc(strings.TrimSpace(string(out)), func(r rune) bool { return r == ',' || r == '|' }) {
		if p != "direct" && p != "off" {
			proxies = append(proxies, p)
		}
	}
	empty := t.TempDir()
	return strings.Join(append(proxies, "file://"+empty), "|")
}
