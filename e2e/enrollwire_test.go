package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

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
