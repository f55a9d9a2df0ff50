package admin_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/internal/tsatest"
)

// bundle fetches POST /v1/admin/audit/bundle with body.
func (e *env) bundle(body string) (*http.Response, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.url+"/v1/admin/audit/bundle", strings.NewReader(body))
	req.Header.Set(admin.SecretHeader, mastiotest.AdminSecret)
	resp, err := e.c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, data
}

// entry is one file of a bundle.
type entry struct {
	name string
	data []byte
}

func unpack(t *testing.T, bundle []byte) []entry {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(bundle))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out []entry
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out = append(out, entry{h.Name, data})
	}
}

func pack(t *testing.T, files []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	tw := tar.NewWriter(gz)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o600, Size: int64(len(f.data))})
		tw.Write(f.data)
	}
	tw.Close()
	gz.Close()
	return b.Bytes()
}

// edited is the bundle with fn applied to the named file.
func edited(t *testing.T, bundle []byte, name string, fn func([]byte) []byte) []byte {
	t.Helper()
	files := unpack(t, bundle)
	for i := range files {
		if files[i].name == name {
			files[i].data = fn(append([]byte(nil), files[i].data...))
		}
	}
	return pack(t, files)
}

func verifyBundle(t *testing.T, bundle []byte, opts audit.BundleOptions) (audit.BundleCheck, bool) {
	t.Helper()
	res, err := audit.VerifyBundle(bytes.NewReader(bundle), opts)
	if err != nil {
		return audit.BundleCheck{Name: "read", Detail: err.Error()}, true
	}
	return res.Failure()
}

func TestAuditBundleVerifiesOnItsOwnAndEveryTamperingIsNamed(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for _, name := range []string{"b-1", "b-2", "b-3", "b-4"} {
		mastiotest.NewAgent(t, e.m, name)
	}
	resp, bundle := e.bundle(`{"from_seq": 2, "to_seq": 6}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/gzip" {
		t.Fatalf("bundle: %d %s", resp.StatusCode, bundle)
	}
	roots := audit.BundleOptions{Roots: e.m.CA().RootPool()}
	if failure, failed := verifyBundle(t, bundle, roots); failed {
		t.Fatalf("a fresh bundle fails: %+v", failure)
	}
	if failure, failed := verifyBundle(t, bundle, audit.BundleOptions{}); failed {
		t.Fatalf("with the bundle's own root: %+v", failure)
	}
	if n := len(mastiotest.Events(t, e.m, "audit.bundled")); n != 1 {
		t.Fatalf("%d audit.bundled rows", n)
	}

	lines := func(fn func([]string) []string) func([]byte) []byte {
		return func(b []byte) []byte {
			ls := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
			return []byte(strings.Join(fn(ls), "\n") + "\n")
		}
	}
	other := mastiotest.New(t, mastio.Settings{}, nil)
	otherRoots := audit.BundleOptions{Roots: other.CA().RootPool()}
	for _, c := range []struct {
		name   string
		bundle []byte
		opts   audit.BundleOptions
		check  string
		seq    int64
		detail string
	}{
		{"a byte of a row", edited(t, bundle, "events.ndjson", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"result":"ok"`), []byte(`"result":"OK"`), 1)
		}), roots, "chain", 2, "changed"},
		{"a row deleted", edited(t, bundle, "events.ndjson", lines(func(l []string) []string { return append(l[:3:3], l[4:]...) })), roots, "chain", 5, "missing or out of order"},
		{"two rows swapped", edited(t, bundle, "events.ndjson", lines(func(l []string) []string { l[2], l[3] = l[3], l[2]; return l })), roots, "chain", 4, "missing or out of order"},
		{"the manifest", edited(t, bundle, "manifest.json", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"last_seq": 6`), []byte(`"last_seq": 5`), 1)
		}), roots, "manifest", 0, "not a whole range"},
		{"the chain file", edited(t, bundle, "chain.pem", func(b []byte) []byte { return append(b, '\n') }), roots, "files", 0, "chain.pem does not match"},
		{"the checkpoint", edited(t, bundle, "checkpoint.jws", func(b []byte) []byte { b[len(b)-3] ^= 1; return b }), roots, "files", 0, "checkpoint.jws does not match"},
		{"a forged checkpoint, the manifest updated to match", forgedCheckpoint(t, bundle), roots, "checkpoint", 6, "signature"},
		{"another Mastio's root", bundle, otherRoots, "checkpoint", 6, "does not chain to the Org root"},
		{"a witness", bundle, audit.BundleOptions{Roots: e.m.CA().RootPool(), Witnesses: map[int64]string{3: strings.Repeat("0", 64)}}, "witness", 3, "the witness says"},
	} {
		failure, failed := verifyBundle(t, c.bundle, c.opts)
		if !failed || failure.Name != c.check || failure.Seq != c.seq || !strings.Contains(failure.Detail, c.detail) {
			t.Errorf("%s: %+v, want check %s at seq %d saying %q", c.name, failure, c.check, c.seq, c.detail)
		}
	}
}

func TestAuditBundleRefusesARangeItCannotBundle(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for body, want := range map[string]int{
		`{"from_seq": 5, "to_seq": 2}`:                                     400,
		`{"from_seq": 900, "to_seq": 901}`:                                 400,
		`{"start": "2001-01-01T00:00:00Z", "end": "2001-01-02T00:00:00Z"}`: 404,
		`{"start": "2001-01-01T00:00:00Z", "from_seq": 1}`:                 400,
		`{"rows": 5}`: 400,
	} {
		if resp, data := e.bundle(body); resp.StatusCode != want {
			t.Errorf("%s: %d %s, want %d", body, resp.StatusCode, data, want)
		}
	}
}

// forgedCheckpoint replaces the checkpoint's payload (another hash) and
// rewrites the manifest's digest of it, as a forger would.
func forgedCheckpoint(t *testing.T, bundle []byte) []byte {
	t.Helper()
	files := unpack(t, bundle)
	var jws []byte
	for i := range files {
		if files[i].name == "checkpoint.jws" {
			parts := strings.Split(string(files[i].data), ".")
			payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
			var c audit.Checkpoint
			json.Unmarshal(payload, &c)
			c.Time = "2001-01-01T00:00:00Z"
			forged, _ := json.Marshal(c)
			parts[1] = base64.RawURLEncoding.EncodeToString(forged)
			files[i].data = []byte(strings.Join(parts, "."))
			jws = files[i].data
		}
	}
	for i := range files {
		if files[i].name == "manifest.json" {
			var m audit.Manifest
			json.Unmarshal(files[i].data, &m)
			sum := sha256.Sum256(jws)
			m.Files["checkpoint.jws"] = hex.EncodeToString(sum[:])
			files[i].data, _ = json.Marshal(m)
		}
	}
	return pack(t, files)
}

// With a timestamp authority (openssl ts), the bundle carries its RFC 3161
// timestamp over the manifest, which verifies against the authority's
// root; another root, or a timestamp over another manifest, fails.
func TestAuditBundleIsTimestamped(t *testing.T) {
	tsa := tsatest.Start(t)
	e := newEnv(t, mastio.Settings{TimestampURL: tsa.URL})
	resp, bundle := e.bundle(`{}`)
	if resp.StatusCode != 200 {
		t.Fatalf("bundle: %d %s", resp.StatusCode, bundle)
	}
	res, err := audit.VerifyBundle(bytes.NewReader(bundle), audit.BundleOptions{Roots: e.m.CA().RootPool(), TSARoots: tsa.Roots})
	if failure, failed := res.Failure(); err != nil || failed {
		t.Fatalf("%+v %v", failure, err)
	}
	last := res.Checks[len(res.Checks)-1]
	if last.Name != "timestamp" || !strings.Contains(last.Detail, "by Test TSA over the manifest") {
		t.Fatalf("timestamp check: %+v", last)
	}
	if failure, _ := verifyBundle(t, bundle, audit.BundleOptions{Roots: e.m.CA().RootPool(), TSARoots: e.m.CA().RootPool()}); failure.Name != "timestamp" ||
		!strings.Contains(failure.Detail, "not trusted") {
		t.Fatalf("another TSA root: %+v", failure)
	}
	// The manifest changed after timestamping (and its digests left
	// alone): the timestamp is over another manifest.
	moved := edited(t, bundle, "manifest.json", func(b []byte) []byte { return bytes.Replace(b, []byte(`"created": "`), []byte(`"created":  "`), 1) })
	if failure, _ := verifyBundle(t, moved, audit.BundleOptions{Roots: e.m.CA().RootPool(), TSARoots: tsa.Roots}); failure.Name != "timestamp" ||
		!strings.Contains(failure.Detail, "another manifest") {
		t.Fatalf("a manifest changed after timestamping: %+v", failure)
	}
}
