package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

const adminSecret = "e2e-admin-secret-3b9f1c7a52d84e06"

// identityServer starts Caddyfile.example with org id "orga" and the admin
// secret in proxy.env, run as the runbook does: caddy run --envfile proxy.env.
func identityServer(t testing.TB) *server {
	t.Helper()
	dir := workDir(t)
	data, err := os.ReadFile(filepath.Join(repoRoot, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	cf := strings.Replace(string(data), "trust_domain mastio.local", "trust_domain mastio.local\n\t\torg_id orga", 1)
	s := newServer(t, dir, cf)
	writeFile(t, filepath.Join(dir, "proxy.env"), "MCP_PROXY_ADMIN_SECRET="+adminSecret+"\n")
	s.configArgs = append(s.configArgs, "--envfile", filepath.Join(dir, "proxy.env"))
	s.start()
	return s
}

// adminCall sends an admin API request with the secret (or the given
// header value) and decodes the JSON answer.
func (s *server) adminCall(t testing.TB, method, path, secret string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, s.url(path), rd)
	if secret != "" {
		req.Header.Set("X-Admin-Secret", secret)
	}
	resp, err := s.client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	json.Unmarshal(raw, &out)
	out["_raw"] = string(raw)
	return resp.StatusCode, out
}

// agentClient is an HTTP client presenting a certificate, over HTTP/1.1 or
// HTTP/2, that records whether each request reused a connection.
type agentClient struct {
	c      *http.Client
	reused bool
	s      *server
}

func newAgentClient(s *server, cert tls.Certificate, h2 bool) *agentClient {
	// GetClientCertificate sends the certificate whatever CAs the server
	// lists, as a hostile client would; a plain Certificates list would
	// silently skip a certificate from a foreign CA.
	tr := &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: s.rootPool(), ServerName: "localhost", SessionTicketsDisabled: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }}}
	if h2 {
		tr.ForceAttemptHTTP2 = true
	} else {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &agentClient{c: &http.Client{Timeout: 10 * time.Second, Transport: tr}, s: s}
}

func (a *agentClient) get(t testing.TB, path string) (int, map[string]any, error) {
	t.Helper()
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { a.reused = i.Reused }}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", a.s.url(path), nil)
	resp, err := a.c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out := map[string]any{}
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out, nil
}

func keyPair(t testing.TB, certPEM, keyPEM string) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func expectHandshakeRefused(t testing.TB, s *server, cert tls.Certificate, what string) {
	t.Helper()
	ac := newAgentClient(s, cert, false)
	code, body, err := ac.get(t, "/v1/agents/me")
	if err == nil {
		t.Fatalf("%s: a new connection was accepted: %d %v", what, code, body)
	}
	if !strings.Contains(err.Error(), "tls") && !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("%s: want a TLS failure, got %v", what, err)
	}
}

func TestEnrollApproveCallRevoke(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		name := "http1.1"
		if h2 {
			name = "http2"
		}
		t.Run(name, func(t *testing.T) {
			s := identityServer(t)
			ctx := context.Background()
			dir := filepath.Join(t.TempDir(), "identity")
			p, err := client.StartEnrollment(ctx, client.EnrollOptions{URL: s.url(""), Dir: dir, RootCAs: s.rootPool(),
				Requester: client.Requester{Name: "Ada Lovelace", Email: "ada@orga.example", Reason: "laptop agent"}})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.SessionID) != 32 || p.PollInterval != 5*time.Second || !strings.HasPrefix(p.PollURL, s.url("/v1/enrollment/")) {
				t.Fatalf("start answer: %+v", p)
			}

			// Without the proof, the status says only that much.
			code, _, body := s.get(s.client(), "/v1/enrollment/"+p.SessionID+"/status")
			var bare map[string]any
			decodeJSON(t, body, &bare)
			if code != 200 || bare["status"] != "pending" || bare["cert_pem"] != nil || bare["hint"] == nil {
				t.Fatalf("status without proof: %d %s", code, body)
			}

			code, list := s.adminCall(t, "GET", "/v1/admin/enrollments?status=pending", adminSecret, nil)
			if code != 200 || !strings.Contains(list["_raw"].(string), p.SessionID) {
				t.Fatalf("pending enrollments: %d %v", code, list["_raw"])
			}
			code, appr := s.adminCall(t, "POST", "/v1/admin/enrollments/"+p.SessionID+"/approve", adminSecret,
				map[string]any{"agent_id": "ada-laptop", "capabilities": []string{"mcp:call"}, "groups": []string{"research"}})
			if code != 200 || appr["agent_id"] != "orga::ada-laptop" {
				t.Fatalf("approve: %d %v", code, appr["_raw"])
			}
			code, again := s.adminCall(t, "POST", "/v1/admin/enrollments/"+p.SessionID+"/approve", adminSecret,
				map[string]any{"agent_id": "ada-laptop-2"})
			if code != 409 || again["error"] != "enrollment_not_pending" || again["message"] != "Cannot approve an enrollment in status 'approved'" {
				t.Fatalf("approve twice: %d %v", code, again["_raw"])
			}

			id, err := p.Wait(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if id.AgentID != "orga::ada-laptop" || len(id.Certificate.Certificate) != 2 {
				t.Fatalf("identity %q with %d certificates", id.AgentID, len(id.Certificate.Certificate))
			}
			if m := fileMode(t, filepath.Join(dir, client.KeyFile)); m != 0o600 {
				t.Fatalf("agent key mode %04o", m)
			}

			ac := newAgentClient(s, id.Certificate, h2)
			code, me, err := ac.get(t, "/v1/agents/me")
			if err != nil || code != 200 || me["agent_id"] != "orga::ada-laptop" || me["spiffe_id"] != "spiffe://mastio.local/orga/ada-laptop" {
				t.Fatalf("agent call: %d %v %v", code, me, err)
			}
			if code, _, _ := ac.get(t, "/v1/agents/me"); code != 200 || !ac.reused {
				t.Fatalf("second call: %d reused=%v", code, ac.reused)
			}

			code, rev := s.adminCall(t, "POST", "/registry/agents/orga::ada-laptop/revoke", adminSecret, map[string]string{"reason": "laptop stolen"})
			if code != 200 || rev["status"] != "revoked" {
				t.Fatalf("revoke: %d %v", code, rev["_raw"])
			}
			// The very next request on the same connection is refused.
			code, denied, err := ac.get(t, "/v1/agents/me")
			if err != nil || !ac.reused {
				t.Fatalf("after revoke: err=%v reused=%v (the test needs the same connection)", err, ac.reused)
			}
			if code != 401 || denied["error"] != "agent_revoked" || denied["message"] != "Certificate has been revoked" {
				t.Fatalf("after revoke on the same connection: %d %v", code, denied)
			}
			expectHandshakeRefused(t, s, id.Certificate, "revoked certificate")
			waitFor(t, "the handshake refusal in the log", 5*time.Second, func() bool {
				return strings.Contains(grepLines(s.out.String(), `"msg":"client certificate refused at handshake"`), `"reason":"agent_revoked"`)
			})

			s.stop()
			db := openDB(t, s.dataDir)
			counts := eventCounts(t, db)
			for _, ev := range []string{"enrollment.started", "enrollment.approved", "agent.created", "agent.revoked"} {
				if counts[ev] != 1 {
					t.Errorf("audit %s: %d rows", ev, counts[ev])
				}
			}
			verifyChain(t, db)
		})
	}
}

func TestRotateCertOldRefusedAtOnceUnlessGrace(t *testing.T) {
	s := identityServer(t)
	code, created := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "worker", "capabilities": []string{"mcp:call"}})
	if code != 201 || created["private_key_pem"] == nil {
		t.Fatalf("create: %d %v", code, created["_raw"])
	}
	first := keyPair(t, created["cert_pem"].(string), created["private_key_pem"].(string))
	ac := newAgentClient(s, first, true)
	if code, _, err := ac.get(t, "/v1/agents/me"); code != 200 || err != nil {
		t.Fatalf("first cert: %d %v", code, err)
	}

	code, rot := s.adminCall(t, "POST", "/registry/agents/orga%3A%3Aworker/rotate-cert", adminSecret, nil)
	if code != 200 || rot["private_key_pem"] == nil {
		t.Fatalf("rotate: %d %v", code, rot["_raw"])
	}
	second := keyPair(t, rot["cert_pem"].(string), rot["private_key_pem"].(string))
	code, body, err := ac.get(t, "/v1/agents/me")
	if err != nil || !ac.reused || code != 401 || body["error"] != "client_cert_pin_mismatch" {
		t.Fatalf("old cert on its open connection after rotation: %d %v %v reused=%v", code, body, err, ac.reused)
	}
	expectHandshakeRefused(t, s, first, "rotated-out certificate")
	if code, me, err := newAgentClient(s, second, false).get(t, "/v1/agents/me"); code != 200 || err != nil || me["agent_id"] != "orga::worker" {
		t.Fatalf("new cert: %d %v %v", code, me, err)
	}

	// An explicit grace period keeps the previous certificate usable.
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(k.Public())
	code, rot2 := s.adminCall(t, "POST", "/v1/admin/agents/orga::worker/rotate-cert", adminSecret, map[string]any{
		"public_key_pem": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})), "grace_seconds": 3600})
	if code != 200 || rot2["private_key_pem"] != nil {
		t.Fatalf("rotate with a public key: %d %v", code, rot2["_raw"])
	}
	if code, me, err := newAgentClient(s, second, false).get(t, "/v1/agents/me"); code != 200 || err != nil || me["cert_in_grace"] != true {
		t.Fatalf("cert in grace: %d %v %v", code, me, err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(k)
	third := keyPair(t, rot2["cert_pem"].(string), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	if code, _, err := newAgentClient(s, third, false).get(t, "/v1/agents/me"); code != 200 || err != nil {
		t.Fatalf("third cert: %d %v", code, err)
	}
}

func TestRunbookSection6AsWritten(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is needed to run the runbook's commands as written")
	}
	s := identityServer(t)
	code, created := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "compromised-agent"})
	if code != 201 {
		t.Fatalf("create: %d %v", code, created["_raw"])
	}
	old := keyPair(t, created["cert_pem"].(string), created["private_key_pem"].(string))

	// Section 6 of the runbook, verbatim but for the port.
	script := `set -e
ADMIN_SECRET="$(grep ^MCP_PROXY_ADMIN_SECRET proxy.env | cut -d= -f2)"
MASTIO="https://localhost:` + fmt.Sprint(s.httpsPort) + `"
AGENT_ID="orga::compromised-agent"

# 1. Revoke the agent (cert thumbprint pin removed; subsequent mTLS fails immediately)
curl -sk -X POST -H "X-Admin-Secret: $ADMIN_SECRET" \
     "$MASTIO/registry/agents/$AGENT_ID/revoke"
echo
echo @@SPLIT@@
# 2. (Optional) Re-issue cert if the workload itself was not compromised
curl -sk -X POST -H "X-Admin-Secret: $ADMIN_SECRET" \
     "$MASTIO/registry/agents/$AGENT_ID/rotate-cert"
`
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = s.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("runbook commands: %v\n%s", err, out)
	}
	parts := strings.Split(string(out), "@@SPLIT@@")
	var revoked, reissued map[string]any
	decodeJSON(t, strings.TrimSpace(parts[0]), &revoked)
	decodeJSON(t, strings.TrimSpace(parts[1]), &reissued)
	if revoked["status"] != "revoked" || revoked["agent_id"] != "orga::compromised-agent" {
		t.Fatalf("revoke output: %s", parts[0])
	}
	if reissued["private_key_pem"] == nil || reissued["agent"].(map[string]any)["status"] != "active" {
		t.Fatalf("rotate-cert output: %s", parts[1])
	}
	expectHandshakeRefused(t, s, old, "compromised certificate after revoke and re-issue")
	clean := keyPair(t, reissued["cert_pem"].(string), reissued["private_key_pem"].(string))
	if code, me, err := newAgentClient(s, clean, false).get(t, "/v1/agents/me"); code != 200 || err != nil || me["agent_id"] != "orga::compromised-agent" {
		t.Fatalf("re-issued certificate: %d %v %v", code, me, err)
	}
	s.stop()
	counts := eventCounts(t, openDB(t, s.dataDir))
	if counts["agent.revoked"] != 1 || counts["agent.cert_rotated"] != 1 {
		t.Fatalf("audit: %v", counts)
	}
	// The secret from proxy.env never reached the logs.
	if strings.Contains(s.out.String(), adminSecret) {
		t.Fatal("the admin secret appears in the server log")
	}
}

func TestForeignAndUnpinnedCertificatesAreRefused(t *testing.T) {
	s := identityServer(t)
	code, _ := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "bot"})
	if code != 201 {
		t.Fatal(code)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	spiffe, _ := url.Parse("spiffe://mastio.local/orga/bot")

	// A certificate for the right name from another CA.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Evil CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "orga::bot"}, URIs: []*url.URL{spiffe},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	leafDER, _ := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, key.Public(), caKey)
	foreign := keyPair(t, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})), keyPEM)
	expectHandshakeRefused(t, s, foreign, "certificate from another CA")

	// A certificate for the right name from the right CA, never registered
	// (as a stolen CA key would allow): not pinned, refused.
	ca, _, err := pki.LoadOrCreate(pki.Config{Dir: filepath.Join(s.dataDir, "pki")})
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := ca.IssueAgent(pki.AgentCert{PublicKey: key.Public(), Identity: pki.AgentIdentity{TrustDomain: "mastio.local", Org: "orga", Name: "bot"}})
	if err != nil {
		t.Fatal(err)
	}
	unpinned := keyPair(t, string(ca.ChainPEM(rogue)), keyPEM)
	expectHandshakeRefused(t, s, unpinned, "unpinned certificate from the Org CA")
	waitFor(t, "the pin mismatch in the log", 5*time.Second, func() bool {
		return strings.Contains(s.out.String(), `"reason":"client_cert_pin_mismatch"`)
	})

	// No header can claim an identity.
	req, _ := http.NewRequest("GET", s.url("/v1/agents/me"), nil)
	for _, h := range []string{"X-SSL-Client-Cert", "X-SSL-Client-Verify", "X-Client-Cert", "X-Forwarded-Client-Cert"} {
		req.Header.Set(h, "SUCCESS")
	}
	resp, err := s.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("identity claimed through headers: %d", resp.StatusCode)
	}
}

func TestAdminSecretIsEnforced(t *testing.T) {
	s := identityServer(t)
	cases := []struct {
		secret string
		status int
		code   string
	}{
		{"", 401, "admin_secret_required"},
		{"   ", 401, "admin_secret_required"},
		{"wrong-secret-0000000000", 403, "admin_secret_invalid"},
		{adminSecret + "x", 403, "admin_secret_invalid"},
	}
	for _, c := range cases {
		code, body := s.adminCall(t, "GET", "/proxy/admin/agents", c.secret, nil)
		if code != c.status || body["error"] != c.code {
			t.Fatalf("secret %q: %d %v", c.secret, code, body["_raw"])
		}
	}
	if code, body := s.adminCall(t, "GET", "/proxy/admin/agents", adminSecret, nil); code != 200 || body["count"] != float64(0) {
		t.Fatalf("right secret: %d %v", code, body["_raw"])
	}
	// Repeated failures lock the address out, even for the right secret.
	var last int
	var hdr string
	for i := 0; i < 12; i++ {
		req, _ := http.NewRequest("GET", s.url("/v1/admin/agents"), nil)
		req.Header.Set("X-Admin-Secret", "guess-"+fmt.Sprint(i)+"-aaaaaaaaaaaaaa")
		resp, err := s.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		last, hdr = resp.StatusCode, resp.Header.Get("Retry-After")
	}
	if last != 429 || hdr == "" {
		t.Fatalf("after repeated failures: %d Retry-After=%q", last, hdr)
	}
	if code, _ := s.adminCall(t, "GET", "/v1/admin/agents", adminSecret, nil); code != 429 {
		t.Fatalf("right secret while locked out: %d", code)
	}
	s.stop()
	counts := eventCounts(t, openDB(t, s.dataDir))
	if counts["admin.auth_failed"] < 10 {
		t.Fatalf("failed attempts audited: %d", counts["admin.auth_failed"])
	}
}

func TestAdminRequestValidationChangesNothing(t *testing.T) {
	s := identityServer(t)
	cases := []struct {
		method, path string
		body         string
		status       int
		code, field  string
	}{
		{"POST", "/v1/admin/agents", `{"agent_name":"a",`, 400, "invalid_request", ""},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","colour":"red"}`, 400, "invalid_request", "colour"},
		{"POST", "/v1/admin/agents", `{"agent_name":42}`, 400, "invalid_request", "agent_name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","capabilities":"mcp:call"}`, 400, "invalid_request", "capabilities"},
		{"POST", "/v1/admin/agents", `{"agent_name":"bad name"}`, 400, "invalid_request", "agent_name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","public_key_pem":"nope"}`, 400, "invalid_request", "public_key_pem"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","dpop_jwk":{"kty":"oct","k":"AA"}}`, 400, "invalid_request", "dpop_jwk"},
		{"POST", "/v1/admin/agents", `{}`, 400, "invalid_request", "agent_name"},
		// Read strictly: a member twice, or in another letter case, is
		// refused and named, never read one way or the other.
		{"POST", "/v1/admin/agents", `{"agent_name":"a","agent_name":"b"}`, 400, "invalid_request", "agent_name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","Agent_Name":"b"}`, 400, "invalid_request", "Agent_Name"},
		{"POST", "/v1/admin/agents", `{"agent_name":"a","capabilities":["x"],"capabilities":["admin"]}`, 400, "invalid_request", "capabilities"},
		{"POST", "/v1/admin/enrollments/nosuchsession/approve", `{"agent_id":"x","agent_id":"y"}`, 400, "invalid_request", "agent_id"},
		{"PUT", "/v1/admin/policies", `{"rules":"","rules":"allow * * */*"}`, 400, "invalid_request", "rules"},
		{"POST", "/v1/admin/agents", `{"agent_name":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "request_too_large", ""},
		{"POST", "/registry/agents/orga::ghost/revoke", ``, 404, "agent_not_found", ""},
		{"POST", "/registry/agents/other::ghost/rotate-cert", ``, 404, "agent_not_found", ""},
		{"GET", "/v1/admin/agents/orga::ghost", ``, 404, "agent_not_found", ""},
		{"POST", "/v1/admin/enrollments/nosuchsession/approve", `{"agent_id":"x"}`, 404, "enrollment_not_found", ""},
		{"PUT", "/v1/admin/agents", `{}`, 405, "method_not_allowed", ""},
		{"GET", "/v1/admin/nothing", ``, 404, "not_found", ""},
	}
	for _, c := range cases {
		code, body := s.adminCall(t, c.method, c.path, adminSecret, c.body)
		field, _ := body["field"].(string)
		if code != c.status || body["error"] != c.code || field != c.field {
			t.Errorf("%s %s %.40s: got %d %v", c.method, c.path, c.body, code, body["_raw"])
		}
	}
	s.stop()
	db := openDB(t, s.dataDir)
	var agents int
	db.QueryRow(`SELECT COUNT(*) FROM agents`).Scan(&agents)
	counts := eventCounts(t, db)
	if agents != 0 || counts["agent.created"] != 0 {
		t.Fatalf("invalid requests wrote something: %d agents, %v", agents, counts)
	}
}

func TestEnrollmentRefusalsOverTheWire(t *testing.T) {
	s := identityServer(t)
	ctx := context.Background()
	p, err := client.StartEnrollment(ctx, client.EnrollOptions{URL: s.url(""), Dir: filepath.Join(t.TempDir(), "id"),
		RootCAs: s.rootPool(), Requester: client.Requester{Name: "N", Email: "n@orga.example"}})
	if err != nil {
		t.Fatal(err)
	}
	// A forged proof gets the bare status, never the certificate.
	req, _ := http.NewRequest("GET", s.url("/v1/enrollment/"+p.SessionID+"/status"), nil)
	req.Header.Set("X-Enrollment-Proof", "MEUCIQDforgedforgedforgedforgedforgedforgedforgedAiBforged")
	resp, err := s.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Contains(string(raw), "agent_id") || !strings.Contains(string(raw), "hint") {
		t.Fatalf("forged proof: %d %s", resp.StatusCode, raw)
	}
	if code, _, body := s.get(s.client(), "/v1/enrollment/unknownsession/status"); code != 404 || !strings.Contains(body, "enrollment_not_found") {
		t.Fatalf("unknown session: %d %s", code, body)
	}
	// PoP over another key.
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki1, _ := x509.MarshalPKIXPublicKey(k1.Public())
	spki2, _ := x509.MarshalPKIXPublicKey(k2.Public())
	_ = spki1
	sum2 := fmt.Sprintf("%x", sha256Sum(spki2))
	pop, _ := client.SignMessage(k1, []byte("enrollment-pop:v1|"+sum2))
	body, _ := json.Marshal(map[string]any{"pubkey_pem": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki1})),
		"requester_name": "N", "requester_email": "n@orga.example", "pop_signature": pop})
	resp, err = s.client().Post(s.url("/v1/enrollment/start"), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(raw), "invalid_pop_signature") {
		t.Fatalf("PoP over another key: %d %s", resp.StatusCode, raw)
	}
	// A member given twice is refused and named, never read either way.
	resp, err = s.client().Post(s.url("/v1/enrollment/start"), "application/json",
		strings.NewReader(`{"requester_name":"N","requester_name":"Admin","requester_email":"n@orga.example"}`))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(raw), `"field":"requester_name"`) {
		t.Fatalf("a duplicate member: %d %s", resp.StatusCode, raw)
	}
	// The per-address limit on starts (5 a minute; some used above, one refused).
	var last int
	for i := 0; i < 5; i++ {
		resp, err := s.client().Post(s.url("/v1/enrollment/start"), "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		last = resp.StatusCode
		if last == 429 && resp.Header.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if last != 429 {
		t.Fatalf("enrollment start not rate limited: %d", last)
	}
}

// TestOriginalSDKEnrollmentWireFormat runs an independent implementation of
// the original SDK's enrollment (Python, `cryptography` and the standard
// library's TLS) against the server, approving it through the admin API.
func TestOriginalSDKEnrollmentWireFormat(t *testing.T) {
	s, _ := tokenServer(t)
	// Part C: an MCP server behind the /v1/mcp aggregator, registered and
	// allowed to the agent-to-be through the admin API.
	weather := mcpUpstream(t, true)
	if code, body := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, map[string]any{"name": "weather", "url": weather.URL + "/mcp"}); code != 201 {
		t.Fatalf("register weather: %d %v", code, body["_raw"])
	}
	if code, body := s.adminCall(t, "PUT", "/v1/admin/policies", adminSecret, "allow agent:orga::sdk-agent tools/call weather/get_forecast\n"); code != 200 {
		t.Fatalf("policy: %d %v", code, body["_raw"])
	}
	out := t.TempDir()
	cmd := exec.Command(pythonWithCryptography(t), filepath.Join(repoRoot, "e2e", "testdata", "sdk_enroll.py"),
		s.url(""), filepath.Join(s.dataDir, "pki", "org-ca.crt"), out, "/api/sdk", "weather.get_forecast")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("python3: %v", err)
	}
	lines := make(chan string, 8)
	go func() {
		defer close(lines)
		buf := make([]byte, 4096)
		var acc string
		for {
			n, err := stdout.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	first := <-lines
	if !strings.HasPrefix(first, "SESSION ") {
		cmd.Wait()
		t.Fatalf("SDK start: %q\n%s", first, stderr.String())
	}
	sid := strings.TrimPrefix(first, "SESSION ")
	code, appr := s.adminCall(t, "POST", "/v1/admin/enrollments/"+sid+"/approve", adminSecret,
		map[string]any{"agent_id": "orga::sdk-agent", "capabilities": []string{"mcp:call"}})
	if code != 200 {
		t.Fatalf("approve: %d %v", code, appr["_raw"])
	}
	agentLine, called, mcpLine := <-lines, <-lines, <-lines
	if err := cmd.Wait(); err != nil || agentLine != "AGENT orga::sdk-agent" {
		t.Fatalf("SDK enrollment: %q %v\n%s", agentLine, err, stderr.String())
	}
	// Part B: challenge login, token with a fresh DPoP key, a guarded call.
	if !strings.HasPrefix(called, "CALLED 200 ") || !strings.Contains(called, `"agent":"orga::sdk-agent"`) {
		t.Fatalf("SDK login and call: %q\n%s", called, stderr.String())
	}
	// Part C: tools/list shows only the allowed tool; the call goes through.
	if mcpLine != "MCP weather.get_forecast sunny in Rome" {
		t.Fatalf("SDK MCP calls: %q (after %q)\n%s", mcpLine, called, stderr.String())
	}
	if m := fileMode(t, filepath.Join(out, "identity", "agent.key")); m != 0o600 {
		t.Fatalf("agent.key mode %04o", m)
	}
}

// pythonWithCryptography finds a Python 3 that can import `cryptography`
// (.ci/run installs Debian's python3-cryptography when none can).
func pythonWithCryptography(t testing.TB) string {
	t.Helper()
	for _, py := range []string{"python3", "/usr/bin/python3"} {
		if exec.Command(py, "-c", "import cryptography").Run() == nil {
			return py
		}
	}
	t.Fatal("no python3 with the cryptography package: apt-get install python3-cryptography")
	return ""
}

// TestAdminLockoutRecovery is runbook section 7: put a new secret in
// proxy.env, restart; the new one works, the old one no longer does, and
// the stored hash was re-bootstrapped.
// TestAdminLockoutRecovery: an address locked out by failed secrets is
// refused even with the right one; rotating the secret and restarting (as
// the runbook says) lets the administrator in with the new secret, and the
// old one is refused.
func TestAdminLockoutRecovery(t *testing.T) {
	s := identityServer(t)
	for i := 0; i < 12; i++ {
		s.adminCall(t, "GET", "/v1/admin/agents", fmt.Sprintf("guess-%d-aaaaaaaaaaaaaa", i), nil)
	}
	if code, _ := s.adminCall(t, "GET", "/proxy/admin/agents", adminSecret, nil); code != 429 {
		t.Fatalf("locked out, right secret: %d", code)
	}
	s.stop()
	const newSecret = "rotated-admin-secret-8d41f0c2e7b9a3"
	writeFile(t, filepath.Join(s.dir, "proxy.env"), "MCP_PROXY_ADMIN_SECRET="+newSecret+"\n")
	s.start()
	if code, body := s.adminCall(t, "GET", "/proxy/admin/agents", newSecret, nil); code != 200 {
		t.Fatalf("new secret after the restart: %d %v", code, body["_raw"])
	}
	if code, body := s.adminCall(t, "GET", "/proxy/admin/agents", adminSecret, nil); code != 403 {
		t.Fatalf("old secret after rotation: %d %v", code, body["_raw"])
	}
}
