package caddymastio

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// newTestHandler provisions the mastio handler over a fresh app, as Caddy
// would.
func newTestHandler(t *testing.T) *Handler {
	t.Helper()
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	h := &Handler{}
	h.app = a
	if err := h.provisionWith(ctx, a); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	return h
}

func serve(h *Handler, method, path string) (*httptest.ResponseRecorder, bool) {
	r := httptest.NewRequest(method, path, nil)
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
	passed := false
	h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		passed = true
		return nil
	}))
	return w, passed
}

// The handler answers the Mastio's paths and passes every other one on.
func TestHandlerOwnsItsPathsOnly(t *testing.T) {
	h := newTestHandler(t)
	if w, passed := serve(h, "GET", "/healthz"); passed || w.Code != 200 || strings.TrimSpace(w.Body.String()) != `{"status":"ok"}` {
		t.Fatalf("healthz: passed=%v %d %s", passed, w.Code, w.Body)
	}
	if w, passed := serve(h, "GET", "/v1/nothing-here"); passed || w.Code != 404 || !strings.Contains(w.Body.String(), "not_found") {
		t.Fatalf("an unserved path of the Mastio's namespace: passed=%v %d %s", passed, w.Code, w.Body)
	}
	if _, passed := serve(h, "GET", "/something/else"); !passed {
		t.Fatal("other paths are not passed to the next handler")
	}
	if _, passed := serve(h, "POST", "/app/v1/mcp"); !passed {
		t.Fatal("a path that merely contains a Mastio path is not passed on")
	}
}
