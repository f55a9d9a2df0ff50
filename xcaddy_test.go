package caddymastio

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

// xcaddyBuilder mirrors the JSON fields of xcaddy's Builder type
// (github.com/caddyserver/xcaddy, builder.go, v0.4.5), so that xcaddy.json
// stays a document xcaddy's library could load.
type xcaddyBuilder struct {
	CaddyVersion string `json:"caddy_version"`
	Plugins      []struct {
		ModulePath string `json:"module_path"`
		Version    string `json:"version,omitempty"`
	} `json:"plugins"`
	Replacements []struct {
		Old string `json:"old"`
		New string `json:"new"`
	} `json:"replacements"`
	OS           string `json:"os,omitempty"`
	Arch         string `json:"arch,omitempty"`
	ARM          string `json:"arm,omitempty"`
	Cgo          bool   `json:"cgo,omitempty"`
	TimeoutGet   int64  `json:"timeout_get,omitempty"`
	TimeoutBuild int64  `json:"timeout_build,omitempty"`
	RaceDetector bool   `json:"race_detector,omitempty"`
	SkipCleanup  bool   `json:"skip_cleanup,omitempty"`
	SkipBuild    bool   `json:"skip_build,omitempty"`
	Debug        bool   `json:"debug,omitempty"`
	BuildFlags   string `json:"build_flags,omitempty"`
	ModFlags     string `json:"mod_flags,omitempty"`
}

// ReadXcaddyManifest decodes xcaddy.json strictly.
func readXcaddyManifest(t *testing.T) xcaddyBuilder {
	t.Helper()
	data, err := os.ReadFile("xcaddy.json")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var b xcaddyBuilder
	if err := dec.Decode(&b); err != nil {
		t.Fatalf("xcaddy.json is not an xcaddy Builder document: %v", err)
	}
	return b
}

func TestXcaddyManifestMatchesGoMod(t *testing.T) {
	b := readXcaddyManifest(t)
	gomod, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	module := regexp.MustCompile(`(?m)^module\s+(\S+)`).FindSubmatch(gomod)
	caddyReq := regexp.MustCompile(`(?m)^\s*(?:require\s+)?github\.com/caddyserver/caddy/v2\s+(v\S+)`).FindSubmatch(gomod)
	if module == nil || caddyReq == nil {
		t.Fatal("cannot find the module path or the caddy requirement in go.mod")
	}
	if b.CaddyVersion != string(caddyReq[1]) {
		t.Errorf("xcaddy.json caddy_version %s, go.mod requires caddy %s", b.CaddyVersion, caddyReq[1])
	}
	if len(b.Plugins) != 1 || b.Plugins[0].ModulePath != string(module[1]) {
		t.Errorf("xcaddy.json plugins %+v, want exactly go.mod's module %s", b.Plugins, module[1])
	}
	if len(b.Replacements) != 1 || b.Replacements[0].Old != string(module[1]) || b.Replacements[0].New != "." {
		t.Errorf("xcaddy.json replacements %+v, want %s => .", b.Replacements, module[1])
	}
	// The README documents the same build.
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	cmd := "xcaddy build " + b.CaddyVersion + " --with " + b.Plugins[0].ModulePath + "=."
	if !strings.Contains(string(readme), cmd) {
		t.Errorf("README.md does not show the xcaddy build of xcaddy.json: %q", cmd)
	}
}
