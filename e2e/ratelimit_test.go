package e2e

import (
	"net/http"
	"strings"
	"testing"
)

// TestAnonymousRateLimits: unauthenticated routes are limited per address
// and across all addresses, as configured; refusals are 429 with
// Retry-After and counted in the metrics by route and scope. Requests that
// carry a pinned client certificate are not anonymous.
func TestAnonymousRateLimits(t *testing.T) {
	s := exampleServer(t, `
		anonymous_rate enrollment off 3
		anonymous_rate token 2 off`, "")
	t.Cleanup(s.kill)

	post := func(c *http.Client, path, ctype, body string) (int, string, string) {
		t.Helper()
		resp, err := c.Post(s.url(path), ctype, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b := readBody(t, resp)
		msg, _ := b["message"].(string)
		if msg == "" {
			msg, _ = b["error_description"].(string)
		}
		return resp.StatusCode, resp.Header.Get("Retry-After"), msg
	}

	// Enrollment: no per-address limit, 3 a minute in all.
	for i := 0; i < 3; i++ {
		if code, _, msg := post(s.client(), "/v1/enrollment/start", "application/json", `{}`); code != 400 {
			t.Fatalf("enrollment start %d: %d %s", i+1, code, msg)
		}
	}
	code, retry, msg := post(s.client(), "/v1/enrollment/start", "application/json", `{}`)
	if code != 429 || retry == "" || !strings.Contains(msg, "from all addresses together") {
		t.Fatalf("4th enrollment start: %d Retry-After=%q %s", code, retry, msg)
	}

	// Token requests without a client certificate: 2 a minute per address.
	form := "application/x-www-form-urlencoded"
	for i := 0; i < 2; i++ {
		if code, _, msg := post(s.client(), "/v1/auth/token", form, "grant_type=client_credentials"); code == 429 {
			t.Fatalf("token request %d limited: %s", i+1, msg)
		}
	}
	code, retry, msg = post(s.client(), "/v1/auth/token", form, "grant_type=client_credentials")
	if code != 429 || retry == "" || !strings.Contains(msg, "from this address") {
		t.Fatalf("3rd anonymous token request: %d Retry-After=%q %s", code, retry, msg)
	}
	// An agent presenting its certificate is not anonymous.
	id := makeIdentity(t, s, "bot")
	withCert := &http.Client{Transport: &http.Transport{TLSClientConfig: id.TLSConfig()}}
	for i := 0; i < 3; i++ {
		if code, _, msg := post(withCert, "/v1/auth/token", form, "grant_type=client_credentials"); code == 429 {
			t.Fatalf("token request with a client certificate limited: %s", msg)
		}
	}

	// Failed admin secrets: 10 a minute per address, then 429.
	for i := 0; i < 11; i++ {
		s.adminCall(t, "GET", "/v1/admin/agents", "wrong-secret-0123456789", nil)
	}
	if code, _ := s.adminCall(t, "GET", "/v1/admin/agents", adminSecret, nil); code != 429 {
		t.Fatalf("admin after 11 failures: %d", code)
	}

	_, metrics := s.admin("GET", "/metrics", nil)
	for _, want := range []string{
		`caddy_mastio_rate_limited_total{route="enrollment",scope="global"} 1`,
		`caddy_mastio_rate_limited_total{route="token",scope="ip"} 1`,
		`caddy_mastio_rate_limited_total{route="admin_auth",scope="ip"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s in:\n%s", want, grepLines(metrics, "rate_limited"))
		}
	}
}
