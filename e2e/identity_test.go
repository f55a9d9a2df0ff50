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
