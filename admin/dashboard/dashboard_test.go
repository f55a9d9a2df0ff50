package dashboard_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/admin/dashboard"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// browser is an operator's browser on a test Mastio: a cookie jar, no
// redirects followed (the tests look at them).
type browser struct {
	t    *testing.T
	m    *mastio.Mastio
	base string
	c    *http.Client
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	m := mastiotest.New(t, mastio.Settings{}, nil)
	srv := mastiotest.Serve(t, m, endpoints.New(m, zap.NewNop(), nil))
	c := mastiotest.Client(m)
	c.Jar, _ = cookiejar.New(nil)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: t, m: m, base: srv.URL, c: c}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(method, path string, form url.Values, hdr ...string) answer {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(data)}
}

func (b *browser) get(path string) answer { return b.do("GET", path, nil) }

func (b *browser) signIn() {
	b.t.Helper()
	a := b.do("POST", "/proxy/login", url.Values{"password": {mastiotest.AdminSecret}, "next": {"/proxy/"}})
	if a.status != 303 || a.header.Get("Location") != "/proxy/" {
		b.t.Fatalf("sign in: %d %s", a.status, a.body)
	}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf is the form token of the session, read off a page.
func (b *browser) csrf() string {
	b.t.Helper()
	m := csrfRE.FindStringSubmatch(b.get("/proxy/keys").body)
	if m == nil {
		b.t.Fatal("no CSRF token on the page")
	}
	return m[1]
}

// post submits a form of the session.
func (b *browser) post(path string, form url.Values) answer {
	b.t.Helper()
	form.Set("csrf", b.csrf())
	return b.do("POST", path, form)
}

func TestSignInSessionAndSignOut(t *testing.T) {
	b := newBrowser(t)
	if a := b.get("/proxy/agents?q=x"); a.status != 303 || a.header.Get("Location") != "/proxy/login?next=%2Fproxy%2Fagents%3Fq%3Dx" {
		t.Fatalf("signed out: %d %v", a.status, a.header)
	}
	login := b.get("/proxy/login?next=/proxy/agents")
	for h, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
		"X-Frame-Options":         "DENY", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
	} {
		if got := login.header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if strings.Contains(login.body, "<script") || strings.Contains(login.body, "style=") {
		t.Fatal("the page has inline script or style")
	}
	if a := b.do("POST", "/proxy/login", url.Values{"password": {"wrong"}}); a.status != 403 || !strings.Contains(a.body, "not the admin secret") {
		t.Fatalf("a wrong secret: %d %s", a.status, a.body)
	}
	if n := len(mastiotest.Events(t, b.m, "admin.auth_failed")); n != 1 {
		t.Fatalf("%d admin.auth_failed rows", n)
	}
	// A sign-in posted from another site is refused, right secret or not.
	if a := b.do("POST", "/proxy/login", url.Values{"password": {mastiotest.AdminSecret}}, "Origin", "https://evil.example"); a.status != 403 {
		t.Fatalf("a sign-in from another origin: %d", a.status)
	}
	// A next that leaves the dashboard is ignored.
	a := b.do("POST", "/proxy/login", url.Values{"password": {mastiotest.AdminSecret}, "next": {"//evil.example/"}})
	if a.status != 303 || a.header.Get("Location") != "/proxy/" {
		t.Fatalf("sign in: %d %v", a.status, a.header)
	}
	ck := a.header.Get("Set-Cookie")
	for _, attr := range []string{dashboard.CookieName + "=", "Path=/proxy/", "HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(ck, attr) {
			t.Errorf("cookie %q lacks %s", ck, attr)
		}
	}
	if a := b.get("/proxy/"); a.status != 200 || !strings.Contains(a.body, "Overview") {
		t.Fatalf("overview: %d", a.status)
	}
	logins := mastiotest.Events(t, b.m, "dashboard.login")
	if len(logins) != 1 || logins[0].Actor != dashboard.Actor {
		t.Fatalf("dashboard.login rows: %+v", logins)
	}
	// Sign out ends the session on the server: the old cookie is dead.
	u, _ := url.Parse(b.base + "/proxy/")
	old := b.c.Jar.Cookies(u)
	if a := b.post("/proxy/logout", url.Values{}); a.status != 303 || a.header.Get("Location") != "/proxy/login" {
		t.Fatalf("sign out: %d", a.status)
	}
	b.c.Jar.SetCookies(u, old)
	if a := b.get("/proxy/"); a.status != 303 {
		t.Fatalf("the cookie after sign out: %d", a.status)
	}
	if n := len(mastiotest.Events(t, b.m, "dashboard.logout")); n != 1 {
		t.Fatalf("%d dashboard.logout rows", n)
	}
}

func TestSignInLockout(t *testing.T) {
	b := newBrowser(t)
	for i := range 10 {
		if a := b.do("POST", "/proxy/login", url.Values{"password": {"guess"}}); a.status != 403 {
			t.Fatalf("attempt %d: %d", i+1, a.status)
		}
	}
	a := b.do("POST", "/proxy/login", url.Values{"password": {mastiotest.AdminSecret}})
	if a.status != 429 || a.header.Get("Retry-After") == "" || !strings.Contains(a.body, "locked") {
		t.Fatalf("the right secret after 10 failures: %d %s", a.status, a.body)
	}
	if a := b.get("/proxy/"); a.status != 303 {
		t.Fatalf("signed in despite the lockout: %d", a.status)
	}
}

func TestFormsNeedTheSessionsToken(t *testing.T) {
	b := newBrowser(t)
	mastiotest.NewAgent(t, b.m, "target")
	b.signIn()
	for name, a := range map[string]answer{
		"no token":     b.do("POST", "/proxy/agents/target/revoke", url.Values{"confirm": {"yes"}}),
		"wrong token":  b.do("POST", "/proxy/agents/target/revoke", url.Values{"confirm": {"yes"}, "csrf": {"x"}}),
		"other origin": b.do("POST", "/proxy/agents/target/revoke", url.Values{"confirm": {"yes"}, "csrf": {b.csrf()}}, "Origin", "https://evil.example"),
	} {
		if a.status != 403 || !strings.Contains(a.body, "CSRF") {
			t.Errorf("%s: %d %s", name, a.status, a.body)
		}
	}
	if n := len(mastiotest.Events(t, b.m, "agent.revoked")); n != 0 {
		t.Fatal("a refused form revoked the agent")
	}
	if a := b.post("/proxy/agents/target/revoke", url.Values{"confirm": {"yes"}}); a.status != 303 {
		t.Fatalf("the form with its token: %d %s", a.status, a.body)
	}
}

func TestExpiredSession(t *testing.T) {
	b := newBrowser(t)
	b.signIn()
	token := b.csrf()
	b.m.ExpireConsoleSessionsForTest()
	if a := b.get("/proxy/agents"); a.status != 303 {
		t.Fatalf("GET with an expired session: %d", a.status)
	}
	a := b.do("POST", "/proxy/keys/rotate", url.Values{"confirm": {"rotate"}, "csrf": {token}})
	if a.status != 401 || !strings.Contains(a.body, "session has ended") {
		t.Fatalf("POST with an expired session: %d %s", a.status, a.body)
	}
	if n := len(mastiotest.Events(t, b.m, "token.signing_key_rotated")); n != 0 {
		t.Fatal("an expired session rotated the key")
	}
}

func startEnrollment(t *testing.T, b *browser, name string) string {
	t.Helper()
	p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: b.base, Dir: filepath.Join(t.TempDir(), name),
		RootCAs: b.m.CA().RootPool(), Requester: client.Requester{Name: name, Email: name + "@orga.example", Reason: "reports"}})
	if err != nil {
		t.Fatal(err)
	}
	return p.SessionID
}

// TestEveryPageAndForm renders every page and submits every form, the way
// the runbook's tasks use them.
func TestEveryPageAndForm(t *testing.T) {
	b := newBrowser(t)
	mastiotest.NewAgent(t, b.m, "alpha", "mcp:call")
	sid, other := startEnrollment(t, b, "Ada"), startEnrollment(t, b, "Bob")
	b.signIn()
	for path, want := range map[string][]string{
		"/proxy/":                             {"Overview", "2</strong> pending", "Intermediate CA", "Signing key"},
		"/proxy/agents":                       {"::alpha", "mcp:call"},
		"/proxy/agents?q=nothing-like-it":     {"No agents match"},
		"/proxy/agents/alpha":                 {"spiffe://", "Revoke", "Rotate certificate"},
		"/proxy/enrollments":                  {sid[:12], "Ada"},
		"/proxy/enrollments/" + sid:           {"Ada", "Ada@orga.example", "Approve", "Reject"},
		"/proxy/policy":                       {"No rules: every MCP call is denied", "May this agent make this call?"},
		"/proxy/audit":                        {"agent.created", "Verify the chain"},
		"/proxy/audit?event_type=nothing.yet": {"No audit rows match"},
		"/proxy/keys":                         {"active", "Type <code>rotate</code>"},
		"/proxy/pki":                          {"Download the Org CA certificate", "Intermediates"},
	} {
		a := b.get(path)
		if a.status != 200 {
			t.Errorf("%s: %d", path, a.status)
			continue
		}
		for _, w := range want {
			if !strings.Contains(a.body, w) {
				t.Errorf("%s lacks %q", path, w)
			}
		}
	}
	if a := b.get("/proxy/enrollments/no-such"); a.status != 404 {
		t.Errorf("an unknown enrollment: %d", a.status)
	}
	if a := b.get("/proxy/agents/nobody"); a.status != 404 {
		t.Errorf("an unknown agent: %d", a.status)
	}
	if a := b.get("/proxy/static/mastio.css"); a.status != 200 || !strings.HasPrefix(a.header.Get("Content-Type"), "text/css") ||
		a.header.Get("Cache-Control") != "public, max-age=3600" {
		t.Errorf("the style sheet: %d %s", a.status, a.header.Get("Content-Type"))
	}

	// Enrollments: approve one, reject the other.
	if a := b.post("/proxy/enrollments/"+sid+"/approve", url.Values{"agent_id": {"ada-bot"}, "capabilities": {"mcp:call, api:read"}}); a.status != 303 {
		t.Fatalf("approve: %d %s", a.status, a.body)
	}
	if a := b.get("/proxy/agents/ada-bot"); !strings.Contains(a.body, "mcp:call, api:read") {
		t.Fatalf("the approved agent: %s", a.body)
	}
	if a := b.post("/proxy/enrollments/"+other+"/reject", url.Values{"reason": {"unknown requester"}}); a.status != 400 {
		t.Fatalf("reject unconfirmed: %d", a.status)
	}
	if a := b.post("/proxy/enrollments/"+other+"/reject", url.Values{"reason": {"unknown requester"}, "confirm": {"yes"}}); a.status != 303 {
		t.Fatalf("reject: %d", a.status)
	}
	if a := b.post("/proxy/enrollments/"+other+"/reject", url.Values{"confirm": {"yes"}}); a.status != 409 {
		t.Fatalf("reject twice: %d %s", a.status, a.body)
	}

	// MCP servers: a bad URL is refused with the reason; a good one is
	// listed, and can be removed after confirming.
	if a := b.post("/proxy/servers", url.Values{"name": {"weather"}, "url": {"ftp://x"}}); a.status != 400 || !strings.Contains(a.body, "Not registered") {
		t.Fatalf("a bad server: %d %s", a.status, a.body)
	}
	if a := b.post("/proxy/servers", url.Values{"name": {"weather"}, "url": {"https://127.0.0.1:1/mcp"}, "bearer_token": {"s3cret-token-value"}}); a.status != 303 {
		t.Fatalf("register a server: %d %s", a.status, a.body)
	}
	if a := b.get("/proxy/policy"); !strings.Contains(a.body, "https://127.0.0.1:1/mcp") || strings.Contains(a.body, "s3cret-token-value") {
		t.Fatalf("the registered server (and never its token): %s", a.body)
	}
	if a := b.post("/proxy/servers/weather/remove", url.Values{}); a.status != 400 {
		t.Fatalf("remove unconfirmed: %d", a.status)
	}
	if a := b.post("/proxy/servers/weather/remove", url.Values{"confirm": {"yes"}}); a.status != 303 || strings.Contains(b.get("/proxy/policy").body, "127.0.0.1:1") {
		t.Fatalf("remove: %d", a.status)
	}

	// Rotate: the minted key is shown once, then nowhere.
	a := b.post("/proxy/agents/alpha/rotate-cert", url.Values{"confirm": {"yes"}})
	key := regexp.MustCompile(`(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----`).FindString(a.body)
	if a.status != 200 || key == "" || !strings.Contains(a.body, "shown this once") {
		t.Fatalf("rotate: %d %s", a.status, a.body)
	}
	body := strings.Split(key, "\n")[1]
	for _, path := range []string{"/proxy/agents/alpha", "/proxy/audit", "/proxy/"} {
		if strings.Contains(b.get(path).body, body) {
			t.Fatalf("the minted key is shown again at %s", path)
		}
	}
	for _, r := range mastiotest.Events(t, b.m, "") {
		if bytes.Contains(r.Details, []byte(body)) {
			t.Fatal("the minted key is in the audit log")
		}
	}
	// Revoke needs its confirmation.
	if a := b.post("/proxy/agents/alpha/revoke", url.Values{"reason": {"lost"}}); a.status != 400 || !strings.Contains(a.body, "Nothing was done") {
		t.Fatalf("revoke unconfirmed: %d", a.status)
	}
	if a := b.post("/proxy/agents/alpha/revoke", url.Values{"reason": {"lost"}, "confirm": {"yes"}}); a.status != 303 {
		t.Fatalf("revoke: %d", a.status)
	}
	revoked := mastiotest.Events(t, b.m, "agent.revoked")
	if len(revoked) != 1 || revoked[0].Actor != "dashboard" {
		t.Fatalf("agent.revoked rows: %+v", revoked)
	}

	// Policy: a bad rule is shown with its line and changes nothing.
	a = b.post("/proxy/policy", url.Values{"rules": {"allow agent:" + b.m.OrgID() + "::ada-bot tools/call weather/get_forecast\nallow nobody\n"}})
	if a.status != 400 || !strings.Contains(a.body, "line 2") || !strings.Contains(a.body, "allow nobody") {
		t.Fatalf("a bad rule: %d %s", a.status, a.body)
	}
	if a := b.post("/proxy/policy", url.Values{"rules": {"allow agent:" + b.m.OrgID() + "::ada-bot tools/call weather/get_forecast\n"}}); a.status != 200 || !strings.Contains(a.body, "Saved") {
		t.Fatalf("a good rule: %d", a.status)
	}
	check := func(name string) string {
		return b.post("/proxy/policy/check", url.Values{"agent_id": {b.m.OrgID() + "::ada-bot"}, "action": {"tools/call"}, "server": {"weather"}, "name": {name}}).body
	}
	if !strings.Contains(check("get_forecast"), "Allowed") || !strings.Contains(check("delete_all"), "Denied") {
		t.Fatal("the dry run does not answer")
	}

	// Audit: verify, export, bundle.
	if a := b.post("/proxy/audit/verify", url.Values{}); !strings.Contains(a.body, "Intact") {
		t.Fatalf("verify: %s", a.body)
	}
	if a := b.get("/proxy/audit/export?format=csv&event_type=agent.revoked"); a.status != 200 || !strings.Contains(a.body, "agent.revoked") ||
		!strings.HasPrefix(a.header.Get("Content-Type"), "text/csv") {
		t.Fatalf("export: %d %s", a.status, a.body)
	}
	a = b.post("/proxy/audit/bundle", url.Values{})
	res, err := audit.VerifyBundle(strings.NewReader(a.body), audit.BundleOptions{Roots: b.m.CA().RootPool()})
	if bad, failed := res.Failure(); a.status != 200 || err != nil || failed {
		t.Fatalf("bundle: %d %v %+v", a.status, err, bad)
	}
	if a := b.post("/proxy/audit/bundle", url.Values{"start": {"yesterday"}}); a.status != 400 {
		t.Fatalf("a bundle with a bad date: %d", a.status)
	}

	// Keys: typed confirmation.
	if a := b.post("/proxy/keys/rotate", url.Values{"confirm": {"yes"}}); a.status != 400 {
		t.Fatalf("rotate without typing rotate: %d", a.status)
	}
	if a := b.post("/proxy/keys/rotate", url.Values{"confirm": {"rotate"}}); a.status != 200 || !strings.Contains(a.body, "is active") {
		t.Fatalf("rotate: %d %s", a.status, a.body)
	}
	for _, typ := range []string{"enrollment.approved", "enrollment.rejected", "agent.cert_rotated", "policy.updated", "audit.exported", "audit.bundled",
		"mcp_server.registered", "mcp_server.removed"} {
		rows := mastiotest.Events(t, b.m, typ)
		if len(rows) == 0 || rows[len(rows)-1].Actor != dashboard.Actor {
			t.Errorf("%s rows: %+v, want one by the dashboard", typ, rows)
		}
	}
}
