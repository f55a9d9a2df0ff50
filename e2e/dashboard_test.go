package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// chromium starts headless Chromium (Debian's chromium; .ci/run installs
// it) trusting exactly the gateway's server certificate, and returns a
// browser context.
func chromium(t *testing.T, s *server) context.Context {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("the dashboard test needs Chromium: apt-get install chromium (.ci/run does)")
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.url(""), "https://"), &tls.Config{RootCAs: s.rootPool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(conn.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	conn.Close()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin),
		chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(spki[:])),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 900))
	if asRoot() {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	return ctx
}

// TestDashboardInARealBrowser: an agent asks with the real `caddy mastio
// enroll`; the operator follows the link it prints in headless Chromium,
// signs in, approves, later revokes the agent; the agent's next call is
// refused. A screenshot of every page is saved under the test's temp dir
// (or in $MASTIO_E2E_SCREENSHOTS, which outlives the test).
func TestDashboardInARealBrowser(t *testing.T) {
	s := exampleServer(t, "", "")
	shots := t.TempDir()
	if dir := os.Getenv("MASTIO_E2E_SCREENSHOTS"); dir != "" { // to look at them after the test
		shots = dir
		os.MkdirAll(dir, 0o755)
	}
	idDir := filepath.Join(t.TempDir(), "identity")
	enroll := exec.Command(caddyBin, "mastio", "enroll", "--url", s.url(""), "--dir", idDir,
		"--ca", filepath.Join(s.dataDir, "pki", "org-ca.crt"), "--name", "Report Bot", "--email", "bot@orga.example",
		"--reason", "weekly reports", "--timeout", "2m")
	stderr, _ := enroll.StderrPipe()
	if err := enroll.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enroll.Process.Kill() })
	var link string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if l, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "approve: "); ok {
			link = l
			break
		}
	}
	go io.Copy(io.Discard, stderr)
	if !strings.HasPrefix(link, s.url("/proxy/enrollments/")) {
		t.Fatalf("caddy mastio enroll printed no dashboard link (%q)", link)
	}

	browser := chromium(t, s)
	if err := chromedp.Do(browser); err != nil { // starts the browser, with no deadline
		t.Fatal(err)
	}
	// do runs steps with a deadline of their own.
	do := func(steps ...chromedp.Action[chromedp.Void]) error {
		ctx, cancel := context.WithTimeout(browser, 30*time.Second)
		defer cancel()
		return chromedp.Do(ctx, steps...)
	}
	ctx := browser
	type CSS = chromedp.CSS
	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644)
		})
	}
	// The link lands on the sign-in page, then on the session.
	err := do(
		chromedp.Navigate(link),
		chromedp.WaitVisible(CSS(`#password`)), shot("login"),
		chromedp.SendKeys(CSS(`#password`), adminSecret),
		chromedp.Submit(CSS(`#password`)),
		chromedp.WaitVisible(CSS(`input[name=agent_id]`)), shot("enrollment"),
	)
	if err != nil {
		t.Fatalf("sign in: %v", err)
	}
	if location, err := chromedp.Run(ctx, chromedp.Location()); err != nil || location != link {
		t.Fatalf("after sign-in the browser is at %s (%v), not the enrollment %s", location, err, link)
	}
	err = do(
		chromedp.SendKeys(CSS(`input[name=agent_id]`), "report-bot"),
		chromedp.SendKeys(CSS(`input[name=capabilities]`), "api:read"),
		chromedp.Click(CSS(`form[action$="/approve"] button`)),
		chromedp.WaitVisible(CSS(`a[href="/proxy/agents/orga::report-bot"]`)), shot("enrollment-approved"),
	)
	if err != nil {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		html, _ := chromedp.Run(ctx, chromedp.OuterHTML(CSS(`main`)))
		t.Fatalf("approve: %v (at %s)\n%s", err, loc, html)
	}
	done := make(chan error, 1)
	go func() { done <- enroll.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("caddy mastio enroll after the approval: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("caddy mastio enroll did not finish after the approval")
	}
	id, err := client.LoadIdentity(idDir)
	if err != nil {
		t.Fatal(err)
	}
	call := func() int {
		sess := id.Session()
		tok, err := sess.Token(context.Background())
		if err != nil {
			return 401
		}
		proof, _ := sess.Proof("GET", s.url("/whoami"), tok)
		code, _, _ := s.get(sess.HTTPClient(), "/whoami", "Authorization", "DPoP "+tok, "DPoP", proof)
		return code
	}
	if code := call(); code != 200 {
		t.Fatalf("the approved agent's call: %d", code)
	}

	// Every page, then the revocation.
	for _, p := range []string{"", "agents", "enrollments?status=all", "policy", "audit", "keys", "pki"} {
		name := strings.SplitN(p, "?", 2)[0]
		if name == "" {
			name = "overview"
		}
		if err := do(chromedp.Navigate(s.url("/proxy/"+p)), chromedp.WaitVisible(CSS(`h1`)), shot(name)); err != nil {
			t.Fatalf("page /proxy/%s: %v", p, err)
		}
		if heading, err := chromedp.Run(ctx, chromedp.Text(CSS(`h1`))); err != nil || heading == "" || heading == "Sign in" {
			t.Fatalf("page /proxy/%s: heading %q (%v)", p, heading, err)
		}
	}
	err = do(
		chromedp.Navigate(s.url("/proxy/agents/orga::report-bot")),
		chromedp.WaitVisible(CSS(`form[action$="/revoke"]`)), shot("agent"),
		chromedp.SendKeys(CSS(`form[action$="/revoke"] input[name=reason]`), "laptop stolen"),
		chromedp.Click(CSS(`form[action$="/revoke"] input[name=confirm]`)),
		chromedp.Click(CSS(`form[action$="/revoke"] button`)),
		chromedp.WaitVisible(CSS(`span.status.revoked`)), shot("agent-revoked"),
	)
	if err != nil {
		t.Fatalf("revoke in the browser: %v", err)
	}
	if code := call(); code != 401 {
		t.Fatalf("the revoked agent's next call: %d, want 401", code)
	}
	for _, name := range []string{"login", "enrollment", "overview", "agents", "enrollments", "policy", "audit", "keys", "pki", "agent", "agent-revoked"} {
		if fi, err := os.Stat(filepath.Join(shots, name+".png")); err != nil || fi.Size() < 1000 {
			t.Errorf("screenshot %s: %v", name, err)
		}
	}
	t.Logf("screenshots in %s", shots)
}
