package endpoints_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

func (e *env) enroll(dir string) *client.Pending {
	e.t.Helper()
	p, err := client.StartEnrollment(context.Background(), client.EnrollOptions{URL: e.srv.URL, Dir: dir, RootCAs: e.m.CA().RootPool(),
		Requester: client.Requester{Name: "Ada", Email: "ada@example.com", Reason: "tests"}})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

func TestEnrollmentFromStartToCertificate(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	p := e.enroll(t.TempDir())
	if p.SessionID == "" || !strings.HasPrefix(p.PollURL, e.srv.URL+"/v1/enrollment/") || p.EnrollURL != e.srv.URL+"/proxy/enrollments/"+p.SessionID {
		t.Fatalf("start: %+v", p)
	}
	// Without the proof, the status says only pending, and how to ask.
	resp, body := e.call(e.anon, "GET", "/v1/enrollment/"+p.SessionID+"/status", "")
	if v := decode(t, body); resp.StatusCode != 200 || v["status"] != "pending" || v["hint"] == nil || v["cert_pem"] != nil {
		t.Fatalf("status without proof: %d %s", resp.StatusCode, body)
	}
	// (The approval link is the dashboard's: package admin/dashboard.)
	if st, err := p.Check(context.Background()); err != nil || st.Status != "pending" {
		t.Fatalf("check with proof while pending: %+v %v", st, err)
	}
	if _, _, err := e.m.Approve(context.Background(), p.SessionID, registry.Approval{AgentName: "ada-bot", Capabilities: []string{"mcp:call"},
		Actor: "admin"}); err != nil {
		t.Fatal(err)
	}
	st, err := p.Check(context.Background())
	if err != nil || st.Status != "approved" || st.AgentID != e.m.OrgID()+"::ada-bot" || !strings.Contains(st.CertPEM, "BEGIN CERTIFICATE") ||
		st.CAPEM != string(e.m.CA().RootPEM()) || strings.Join(st.Capabilities, ",") != "mcp:call" {
		t.Fatalf("approved: %+v %v", st, err)
	}
	if n := len(mastiotest.Events(t, e.m, "enrollment.started")); n != 1 {
		t.Fatalf("%d enrollment.started rows", n)
	}
}

func TestEnrollmentRefusals(t *testing.T) {
	e := newEnv(t, mastio.Settings{AnonymousRates: map[string]mastio.Rate{"enrollment": {PerIP: 2}}})
	for _, c := range []struct{ body, code, field string }{
		{`{"pubkey_pem":"x","principal_type":"user"}`, "invalid_request", "principal_type"},
		{`{"pubkey_pem":"short"}`, "invalid_request", "pubkey_pem"},
	} {
		resp, body := e.call(e.anon, "POST", "/v1/enrollment/start", c.body)
		if v := decode(t, body); resp.StatusCode != 400 || v["error"] != c.code || v["field"] != c.field {
			t.Errorf("%s: %d %s", c.body, resp.StatusCode, body)
		}
	}
	// Two a minute from one address: the third is 429 with Retry-After.
	resp, body := e.call(e.anon, "POST", "/v1/enrollment/start", `{}`)
	if retry, _ := strconv.Atoi(resp.Header.Get("Retry-After")); resp.StatusCode != 429 || retry < 1 || decode(t, body)["error"] != "rate_limited" {
		t.Fatalf("third enrollment in a minute: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	for _, path := range []string{"/v1/enrollment/unknown/status", "/proxy/enrollments/unknown"} {
		if resp, body := e.call(e.anon, "GET", path, ""); resp.StatusCode != 404 {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
}

func TestTokenForAnAssertionAndAProof(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	a := mastiotest.NewAgent(t, e.m, "worker", "mcp:call")
	s, err := a.Identity.NewSession(e.srv.URL, &http.Transport{TLSClientConfig: a.Identity.TLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Token(context.Background())
	if err != nil || tok == "" {
		t.Fatalf("token: %v", err)
	}
	issued := mastiotest.Events(t, e.m, "token.issued")
	if len(issued) != 1 || mastiotest.Details(t, issued[0])["jkt"] != s.JKT() || mastiotest.Details(t, issued[0])["x5t#S256"] == "" {
		t.Fatalf("token.issued: %+v", issued)
	}
	// The token works on the certificate-bound routes' DPoP twin: /v1/agents/me needs a certificate anyway.
	resp, body := e.call(e.certClient(a), "GET", "/v1/agents/me", "")
	if v := decode(t, body); resp.StatusCode != 200 || v["agent_id"] != a.ID || v["cert_in_grace"] != false {
		t.Fatalf("me: %d %s", resp.StatusCode, body)
	}

	// An assertion is used once, even by its own agent.
	assertion, _ := s.Assertion("")
	post := func() (*http.Response, string) {
		proof, _ := s.Proof("POST", e.srv.URL+"/v1/auth/token", "")
		return e.call(e.anon, "POST", "/v1/auth/token", `{"client_assertion":"`+assertion+`"}`, "DPoP", proof)
	}
	if resp, body := post(); resp.StatusCode != 200 {
		t.Fatalf("a fresh assertion: %d %s", resp.StatusCode, body)
	}
	resp, body = post()
	if v := decode(t, body); resp.StatusCode != 401 || v["reason"] != "assertion_replay" || v["error"] != "invalid_client" {
		t.Fatalf("the same assertion again: %d %s", resp.StatusCode, body)
	}
	if refused := mastiotest.Events(t, e.m, "auth.refused"); len(refused) != 1 || refused[0].Subject != a.ID {
		t.Fatalf("the replay names the agent and is audited: %+v", refused)
	}
}

func TestTokenRequestRefusals(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	form := func(v url.Values) (*http.Response, string) {
		return e.call(e.anon, "POST", "/v1/auth/token", v.Encode(), "Content-Type", "application/x-www-form-urlencoded")
	}
	if resp, body := form(url.Values{"grant_type": {"password"}}); resp.StatusCode != 400 || decode(t, body)["error"] != "unsupported_grant_type" {
		t.Errorf("password grant: %d %s", resp.StatusCode, body)
	}
	if resp, body := form(url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {"x"}}); resp.StatusCode != 400 {
		t.Errorf("wrong assertion type: %d %s", resp.StatusCode, body)
	}
	if resp, body := e.call(e.anon, "POST", "/v1/auth/token", `{"client_assertion":"a","client_assertion":"b"}`); resp.StatusCode != 400 {
		t.Errorf("a member twice: %d %s", resp.StatusCode, body)
	}
	resp, body := e.call(e.anon, "POST", "/v1/auth/token", `{}`)
	if v := decode(t, body); resp.StatusCode != 401 || v["reason"] != "missing_assertion" || resp.Header.Get("DPoP-Nonce") == "" {
		t.Errorf("no assertion: %d %v %s", resp.StatusCode, resp.Header, body)
	}
	if resp, body := e.call(e.anon, "POST", "/v1/auth/token", `{"client_assertion":"not.a.jwt"}`); resp.StatusCode != 401 ||
		decode(t, body)["reason"] != "invalid_assertion" {
		t.Errorf("garbage assertion: %d %s", resp.StatusCode, body)
	}
	// Nobody is named: nothing is audited.
	if n := len(mastiotest.Events(t, e.m, "auth.refused")); n != 0 {
		t.Fatalf("%d anonymous refusals audited", n)
	}
}

func TestChallengeLogin(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	a := mastiotest.NewAgent(t, e.m, "legacy", "mcp:call")
	c := e.certClient(a)
	if resp, body := e.call(e.anon, "POST", "/v1/auth/login-challenge", ""); resp.StatusCode != 401 ||
		decode(t, body)["error"] != "client_cert_required" {
		t.Fatalf("without a certificate: %d %s", resp.StatusCode, body)
	}
	resp, body := e.call(c, "POST", "/v1/auth/login-challenge", "")
	nonce, _ := decode(t, body)["nonce"].(string)
	if resp.StatusCode != 200 || nonce == "" || decode(t, body)["agent_id"] != a.ID {
		t.Fatalf("challenge: %d %s", resp.StatusCode, body)
	}
	s := a.Session(t, e.srv)
	assertion, _ := s.Assertion(nonce)
	req, _ := json.Marshal(map[string]string{"client_assertion": assertion, "nonce": nonce})
	if resp, body := e.call(c, "POST", "/v1/auth/sign-challenged-assertion", string(req)); resp.StatusCode != 200 ||
		decode(t, body)["client_assertion"] != assertion {
		t.Fatalf("challenged assertion: %d %s", resp.StatusCode, body)
	}
	resp, body = e.call(c, "POST", "/v1/auth/sign-challenged-assertion", string(req))
	if resp.StatusCode != 401 || decode(t, body)["reason"] != "challenge_replay" {
		t.Fatalf("the challenge again: %d %s", resp.StatusCode, body)
	}
	if refused := mastiotest.Events(t, e.m, "auth.refused"); len(refused) != 1 || refused[0].Subject != a.ID {
		t.Fatalf("the refusal names the agent and is audited: %+v", refused)
	}
	if resp, body := e.call(c, "POST", "/v1/auth/sign-assertion", "{}"); resp.StatusCode != 409 || decode(t, body)["error"] != "no_server_held_key" {
		t.Fatalf("server-held key: %d %s", resp.StatusCode, body)
	}
}

func TestAgentDirectoryAndRevocation(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	a := mastiotest.NewAgent(t, e.m, "alpha", "mcp:call", "reports")
	mastiotest.NewAgent(t, e.m, "beta", "mcp:call")
	c := e.certClient(a)
	for q, want := range map[string]int{"": 2, "?q=ALPH": 1, "?capability=reports": 1, "?q=gamma": 0} {
		resp, body := e.call(c, "GET", "/v1/agents/search"+q, "")
		if v := decode(t, body); resp.StatusCode != 200 || v["count"] != float64(want) {
			t.Errorf("search%s: %d %s", q, resp.StatusCode, body)
		}
	}
	if _, err := e.m.Registry().Revoke(context.Background(), a.ID, "test", "admin", nil); err != nil {
		t.Fatal(err)
	}
	// The open connection was made before the revocation: refused all the same.
	resp, body := e.call(c, "GET", "/v1/agents/me", "")
	if v := decode(t, body); resp.StatusCode != 401 || v["error"] != registry.DenyRevoked || v["hint"] == nil {
		t.Fatalf("revoked agent: %d %s", resp.StatusCode, body)
	}
	if refused := mastiotest.Events(t, e.m, "auth.refused"); len(refused) != 1 || refused[0].Subject != a.ID {
		t.Fatalf("the refusal of a revoked agent is audited: %+v", refused)
	}
}
