// Package e2e runs the real binary: cmd/caddy built once per test run and
// started as a subprocess on loopback ports, talked to over real TLS.
//
// When the tests run as root, servers run as user nobody, so that file
// permission faults (a read-only database) behave as they do in production.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
	"github.com/caddy-mastio/caddy-mastio/internal/redistest"
	"github.com/caddy-mastio/caddy-mastio/internal/testutil"
)

// caddyBin is the binary under test, built once in TestMain (or given by
// MASTIO_E2E_BINARY to reuse a build).
var caddyBin string

// repoRoot is the repository checkout.
var repoRoot string

func TestMain(m *testing.M) {
	wd, _ := os.Getwd()
	repoRoot = filepath.Dir(wd)
	os.Exit(pgtest.Main(func() int {
		return redistest.Main(func() int {
			code, err := run(m)
			if err != nil {
				fmt.Fprintln(os.Stderr, "e2e:", err)
				return 1
			}
			return code
		})
	}))
}

func run(m *testing.M) (int, error) {
	if bin := os.Getenv("MASTIO_E2E_BINARY"); bin != "" {
		caddyBin = bin
		return m.Run(), nil
	}
	dir, err := os.MkdirTemp("", "mastio-e2e-bin-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	caddyBin = filepath.Join(dir, "caddy")
	start := time.Now()
	// The default build is pure Go (CGO_ENABLED=0 proves it); the tests
	// of the pkcs11 key store build with its tag, and cgo.
	cmd := exec.Command("go", "build", "-tags", buildTags, "-o", caddyBin, "./cmd/caddy")
	cmd.Dir = repoRoot
	cmd.Env = os.Environ()
	if buildTags == "" {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("building cmd/caddy: %w", err)
	}
	fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", caddyBin, time.Since(start).Round(time.Second))
	return m.Run(), nil
}

// buildTags are the build tags of the binary under test: those of this
// test binary (pkcs11_test.go adds "pkcs11").
var buildTags = ""

// asRoot reports whether servers are dropped to nobody.
func asRoot() bool { return os.Geteuid() == 0 }

// workDir is a fresh directory the server user owns and can reach.
func workDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mastio-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	if asRoot() {
		os.Chown(dir, testutil.NobodyUID, testutil.NobodyUID)
	}
	return dir
}

// freePort returns a loopback port nobody listens on, never one it
// returned before in this process: the kernel may hand a port it just
// freed out again, and a server's https_port equal to its http_port (or
// to another server's) fails in confusing ways.
func freePort(t testing.TB) int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port
		}
	}
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// server is one running caddy process.
type server struct {
	t          testing.TB
	dir        string
	dataDir    string
	httpsPort  int
	httpPort   int
	adminAddr  string
	env        []string
	configArgs []string
	cmd        *exec.Cmd
	out        *syncBuffer
	exited     chan struct{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newServer prepares (but does not start) a server in dir using the given
// Caddyfile text; Caddyfile.example is the default.
func newServer(t testing.TB, dir, caddyfile string, extraEnv ...string) *server {
	t.Helper()
	if caddyfile == "" {
		data, err := os.ReadFile(filepath.Join(repoRoot, "Caddyfile.example"))
		if err != nil {
			t.Fatal(err)
		}
		caddyfile = string(data)
	}
	if onPostgres {
		// The same gateway on a Postgres database of its own (the data
		// directory keeps the Org CA and keys, as with SQLite).
		if !strings.Contains(caddyfile, "\tmastio {\n") {
			t.Fatal("this test's Caddyfile has no mastio global options to point at Postgres")
		}
		caddyfile = strings.Replace(caddyfile, "\tmastio {\n", "\tmastio {\n\t\tdatabase {$MASTIO_DATABASE_URL}\n", 1)
		extraEnv = append(extraEnv, "MASTIO_DATABASE_URL="+pgtest.Database(t))
	}
	writeFile(t, filepath.Join(dir, "Caddyfile"), caddyfile)
	s := &server{t: t, dir: dir, dataDir: filepath.Join(dir, "data"), httpsPort: freePort(t), httpPort: freePort(t)}
	s.adminAddr = fmt.Sprintf("localhost:%d", freePort(t))
	s.env = append([]string{
		"HOME=" + dir,
		"XDG_DATA_HOME=" + filepath.Join(dir, "xdg-data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "xdg-config"),
		"PATH=" + os.Getenv("PATH"),
		fmt.Sprintf("MASTIO_HTTPS_PORT=%d", s.httpsPort),
		fmt.Sprintf("MASTIO_HTTP_PORT=%d", s.httpPort),
		"MASTIO_ADMIN_ADDR=" + s.adminAddr,
		"MASTIO_DATA_DIR=" + s.dataDir,
	}, extraEnv...)
	s.configArgs = []string{"--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile"}
	return s
}

// exampleServer starts a server on Caddyfile.example with org_id orga,
// global adds to the mastio option, routes added to the site before its
// mastio handler, the admin secret in an envfile, and env for the
// Caddyfile's {$VARS}.
func exampleServer(t testing.TB, global, routes string, env ...string) *server {
	t.Helper()
	return exampleServerWith(t, nil, global, routes, env...)
}

// exampleServerWith is exampleServer with edit applied to the Caddyfile
// first (for options outside the mastio block).
func exampleServerWith(t testing.TB, edit func(string) string, global, routes string, env ...string) *server {
	t.Helper()
	dir := workDir(t)
	data, err := os.ReadFile(filepath.Join(repoRoot, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		data = []byte(edit(string(data)))
	}
	cf := strings.Replace(string(data), "trust_domain mastio.local", "trust_domain mastio.local\n\t\torg_id orga\n"+global, 1)
	cf = strings.Replace(cf, "\t# Health, readiness", routes+"\n\t# Health, readiness", 1)
	s := newServer(t, dir, cf, env...)
	writeFile(t, filepath.Join(dir, "proxy.env"), "MCP_PROXY_ADMIN_SECRET="+adminSecret+"\n")
	s.configArgs = append(s.configArgs, "--envfile", filepath.Join(dir, "proxy.env"))
	s.start()
	return s
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if asRoot() {
		os.Chown(path, testutil.NobodyUID, testutil.NobodyUID)
	}
}

// command returns an exec.Cmd for the binary with the server's environment
// and user.
func (s *server) command(args ...string) *exec.Cmd {
	return s.prepare(exec.Command(caddyBin, args...))
}

func (s *server) prepare(cmd *exec.Cmd) *exec.Cmd {
	cmd.Dir = s.dir
	cmd.Env = s.env
	if asRoot() {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testutil.NobodyUID, Gid: testutil.NobodyUID}}
	}
	return cmd
}

// start runs `caddy run` and waits until /healthz answers over TLS
// verified against the generated Org root.
func (s *server) start() {
	s.t.Helper()
	s.out = &syncBuffer{}
	s.cmd = s.command(append([]string{"run"}, s.configArgs...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.exited) }()
	s.t.Cleanup(func() {
		s.kill()
		if s.t.Failed() {
			s.t.Logf("caddy's errors:\n%s\n%s", grepLines(s.out.String(), `"level":"error"`), grepLines(s.out.String(), `"decision":"deny"`))
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.exited:
			s.t.Fatalf("caddy exited during start-up:\n%s", s.out)
		default:
		}
		if _, err := os.Stat(filepath.Join(s.dataDir, "pki", "org-ca.crt")); err == nil {
			if resp, err := s.client().Get(s.url("/healthz")); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("caddy did not become healthy in time:\n%s", s.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGINT (Ctrl-C) and waits for a clean exit.
func (s *server) stop() {
	s.t.Helper()
	s.cmd.Process.Signal(os.Interrupt)
	s.waitExit()
}

func (s *server) waitExit() {
	s.t.Helper()
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.t.Fatalf("caddy did not exit:\n%s", s.out)
	}
}

func (s *server) kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		select {
		case <-s.exited:
		default:
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
}

func (s *server) url(path string) string {
	return fmt.Sprintf("https://localhost:%d%s", s.httpsPort, path)
}

// rootPool returns a pool with the generated Org root, read from disk.
func (s *server) rootPool() *x509.CertPool {
	s.t.Helper()
	pemBytes, err := os.ReadFile(filepath.Join(s.dataDir, "pki", "org-ca.crt"))
	if err != nil {
		s.t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		s.t.Fatal("org-ca.crt holds no certificate")
	}
	return pool
}

// client verifies the server against the Org root only (no system roots).
func (s *server) client() *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: s.rootPool(), ServerName: "localhost"},
			ForceAttemptHTTP2: true,
		},
	}
}

// get fetches path and returns the status, headers and body.
func (s *server) get(c *http.Client, path string, hdr ...string) (int, http.Header, string) {
	s.t.Helper()
	req, _ := http.NewRequest("GET", s.url(path), nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(body)
}

// admin sends a request to the server's admin endpoint.
func (s *server) admin(method, path string, body io.Reader) (int, string) {
	s.t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.adminAddr+path, body)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitFor polls cond until it is true or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runCaddy runs a one-shot caddy command as the server user and returns
// its combined output and exit error.
func (s *server) runCaddy(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := s.prepare(exec.CommandContext(ctx, caddyBin, args...)).CombinedOutput()
	return string(out), err
}

func decodeJSON(t testing.TB, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decoding %q: %v", s, err)
	}
}

func contains(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// load runs traffic on goroutines until halted: each loop calls its
// function with 0, 1, 2, ... until halt.
type load struct {
	stop chan struct{}
	wg   sync.WaitGroup
}

func newLoad() *load { return &load{stop: make(chan struct{})} }

// loop runs f(i) for i = 0, 1, ... on its own goroutine until halt.
func (l *load) loop(f func(i int)) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			f(i)
		}
	}()
}

// halt stops every loop and waits for the calls in progress.
func (l *load) halt() {
	close(l.stop)
	l.wg.Wait()
}
