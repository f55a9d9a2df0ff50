package caddymastio

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func newTestHandler(t *testing.T) (*Handler, *App) {
	t.Helper()
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	a.state.store.SetProbeTTL(0)
	return &Handler{app: a}, a
}

func serve(h *Handler, method, path string, hdr map[string]string) (*httptest.ResponseRecorder, bool) {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	passed := false
	h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		passed = true
		return nil
	}))
	return w, passed
}

func TestHealthEndpoints(t *testing.T) {
	h, _ := newTestHandler(t)
	w, _ := serve(h, "GET", "/healthz", nil)
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s", w.Code, w.Body)
	}
	w, _ = serve(h, "GET", "/readyz", nil)
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != `{"status":"ready","checks":{"database":"ok","pki":"ok","signing_keys":"ok"}}` {
		t.Fatalf("readyz: %d %s", w.Code, w.Body)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Error("readyz is cacheable")
	}
	w, _ = serve(h, "POST", "/healthz", nil)
	if w.Code != 405 || w.Header().Get("Allow") != "GET, HEAD" || !strings.Contains(w.Body.String(), "method_not_allowed") {
		t.Fatalf("POST healthz: %d %s", w.Code, w.Body)
	}
	if _, passed := serve(h, "GET", "/something/else", nil); !passed {
		t.Fatal("other paths are not passed to the next handler")
	}
}

func TestReadyzNamesTheFailingCheckAndRecovers(t *testing.T) {
	h, a := newTestHandler(t)
	db := a.state.store.Path()
	os.Rename(db, db+".aside")
	w, _ := serve(h, "GET", "/readyz", nil)
	var body struct {
		Status  string            `json:"status"`
		Checks  map[string]string `json:"checks"`
		Reasons map[string]string `json:"reasons"`
	}
	json.Unmarshal(w.Body.Bytes(), &body)
	if w.Code != 503 || body.Status != "not_ready" || body.Checks["database"] != "error" || body.Reasons["database"] != "missing" {
		t.Fatalf("readyz with the database gone: %d %s", w.Code, w.Body)
	}
	if strings.Contains(w.Body.String(), db) {
		t.Fatal("readyz reveals the database path to anonymous callers")
	}
	os.Rename(db+".aside", db)
	if w, _ := serve(h, "GET", "/readyz", nil); w.Code != 200 {
		t.Fatalf("readyz did not recover: %d %s", w.Code, w.Body)
	}

	key := filepath.Join(a.dataDir, "pki", "intermediate.key")
	os.Rename(key, key+".aside")
	w, _ = serve(h, "GET", "/readyz", nil)
	if w.Code != 503 || !strings.Contains(w.Body.String(), `"pki":"error"`) {
		t.Fatalf("readyz with the CA key gone: %d %s", w.Code, w.Body)
	}
	os.Rename(key+".aside", key)
}

func TestCACertEndpoint(t *testing.T) {
	h, a := newTestHandler(t)
	w, _ := serve(h, "GET", "/pki/ca.crt", nil)
	if w.Code != 200 || w.Body.String() != string(a.CA().RootPEM()) {
		t.Fatalf("ca.crt: %d", w.Code)
	}
	disk, _ := os.ReadFile(filepath.Join(a.dataDir, "pki", "org-ca.crt"))
	if string(disk) != w.Body.String() {
		t.Fatal("served root differs from data/pki/org-ca.crt")
	}
	etag := w.Header().Get("ETag")
	if !strings.HasPrefix(etag, `"`) || w.Header().Get("Cache-Control") != "public, max-age=300" ||
		w.Header().Get("Content-Type") != "application/x-pem-file" {
		t.Fatalf("headers: %v", w.Header())
	}
	if w, _ := serve(h, "GET", "/pki/ca.crt", map[string]string{"If-None-Match": etag}); w.Code != 304 || w.Body.Len() != 0 {
		t.Fatalf("conditional GET: %d", w.Code)
	}
	if w, _ := serve(h, "GET", "/pki/ca.crt", map[string]string{"If-None-Match": `"other", W/` + etag}); w.Code != 304 {
		t.Fatalf("weak/list If-None-Match: %d", w.Code)
	}
	if w, _ := serve(h, "HEAD", "/pki/ca.crt", nil); w.Code != 200 || w.Body.Len() != 0 {
		t.Fatalf("HEAD: %d %d", w.Code, w.Body.Len())
	}
}
