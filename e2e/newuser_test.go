package e2e

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// TestEveryUnservedPathIs404JSON: paths nothing serves answer 404 with a
// JSON body — in the Mastio's namespaces (naming the original Mastio's
// routes this gateway does not have) and, through Caddyfile.example's
// last route, everywhere else.
func TestEveryUnservedPathIs404JSON(t *testing.T) {
	s := identityServer(t)
	// Under /registry/ (the admin API) the secret comes first.
	if code, b := s.adminCall(t, "GET", "/registry/nothing", adminSecret, nil); code != 404 || b["error"] != "not_found" {
		t.Errorf("/registry/nothing: %d %v", code, b["_raw"])
	}
	for path, want := range map[string]string{
		"/v1/nothing":                 "nothing is served at /v1/nothing",
		"/v1/chat/completions":        "LLM proxying",
		"/v1/egress/tools/invoke":     "egress API",
		"/v1/ingress/tools":           "federated ingress",
		"/proxy/":                     "dashboard is not part of this version",
		"/proxy/agents/orga::x":       "dashboard is not part of this version",
		"/pki/export-ca":              "nothing is served",
		"/.well-known/openid-whatnot": "nothing is served",
		"/favicon.ico":                "nothing is served at this path",
		"/":                           "nothing is served at this path",
	} {
		for _, method := range []string{"GET", "POST"} {
			req, _ := http.NewRequest(method, s.url(path), nil)
			resp, err := s.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b := readBody(t, resp)
			if resp.StatusCode != 404 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
				b["error"] != "not_found" || !strings.Contains(b["message"].(string), want) {
				t.Errorf("%s %s: %d %q %v", method, path, resp.StatusCode, resp.Header.Get("Content-Type"), b["_raw"])
			}
		}
	}
}

// TestEnrollmentLinkLeadsSomewhere: the approval link `caddy mastio
// enroll` prints answers with the admin API calls that decide the session.
func TestEnrollmentLinkLeadsSomewhere(t *testing.T) {
	s := identityServer(t)
	p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), "id"),
		RootCAs: s.rootPool(), Requester: client.Requester{Name: "N", Email: "n@orga.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p.EnrollURL, s.url("/proxy/enrollments/")) {
		t.Fatalf("enroll url %q", p.EnrollURL)
	}
	resp, err := s.client().Get(p.EnrollURL)
	if err != nil {
		t.Fatal(err)
	}
	b := readBody(t, resp)
	page := b["_raw"].(string)
	if resp.StatusCode != 200 || !contains(page, "/v1/admin/enrollments/"+p.SessionID+"/approve", "/reject", "pending") ||
		strings.Contains(page, "n@orga.example") {
		t.Fatalf("the approval link: %d %s", resp.StatusCode, page)
	}
	if code, _, _ := s.get(s.client(), "/proxy/enrollments/no-such-session"); code != 404 {
		t.Fatalf("an unknown session's link: %d", code)
	}
}

// TestCaddyAndMastioMetricsTogether: Caddyfile.example switches Caddy's
// HTTP metrics on, so caddy_http_* appear beside caddy_mastio_*.
func TestCaddyAndMastioMetricsTogether(t *testing.T) {
	s := identityServer(t)
	s.get(s.client(), "/healthz")
	s.get(s.client(), "/whoami") // refused: no token
	_, body := s.admin("GET", "/metrics", nil)
	if !contains(body, "caddy_http_request_duration_seconds", `caddy_mastio_auth_total{reason="missing_token",result="deny"} 1`) {
		t.Fatalf("metrics: %.3000s", body)
	}
}
