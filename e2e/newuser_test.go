package e2e

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/url"
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
		"/proxy/nothing-here":         "no dashboard page here",
		"/proxy/agents/orga::x/edit":  "no dashboard page here",
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
	// Signed out, the link leads to the dashboard's sign-in, and back.
	c := s.client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(p.EnrollURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != 303 || loc != "/proxy/login?next="+url.QueryEscape("/proxy/enrollments/"+p.SessionID) {
		t.Fatalf("the approval link, signed out: %d %s", resp.StatusCode, loc)
	}
	c.Jar, _ = cookiejar.New(nil)
	resp, err = c.PostForm(s.url("/proxy/login"), url.Values{"password": {adminSecret}, "next": {"/proxy/enrollments/" + p.SessionID}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	code, _, page := s.get(c, "/proxy/enrollments/"+p.SessionID)
	if code != 200 || !contains(page, "/proxy/enrollments/"+p.SessionID+"/approve", "/reject", "pending", "n@orga.example") {
		t.Fatalf("the approval link, signed in: %d %s", code, page)
	}
	if code, _, _ := s.get(c, "/proxy/enrollments/no-such-session"); code != 404 {
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
