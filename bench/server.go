package main

import (
	"bytes"
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
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

const adminSecret = "bench-admin-secret-5f2c9a81d3e647b0"

// gateway is one Caddy process under measurement.
type gateway struct {
	bin, dir, port, admin string
	cmd                   *exec.Cmd
	roots                 *x509.CertPool
	id                    *client.Identity
}

// caddyfile is the measured configuration: the routes every scenario
// needs on one site, with audit_sync as given.
func caddyfile(dir, port, admin, auditSync, fast, slow, sessions string) string {
	return fmt.Sprintf(`{
	admin %[3]s
	https_port %[2]s
	auto_https disable_redirects
	storage file_system %[1]s/caddy
	servers {
		protocols h1 h2
	}
	mastio {
		data_dir %[1]s/data
		org_id bench
		admin_secret %[7]s
		audit_sync %[4]s
		anonymous_rate enrollment off off
		anonymous_rate token off off
		policy {
			allow capability:mcp:call tools/call weather/*
			allow capability:mcp:call tools/call slow/*
		}
	}
}

localhost:%[2]s {
	tls {
		issuer mastio
		client_auth {
			mode verify_if_given
			trust_pool mastio
			verifier mastio
		}
	}
	handle /respond {
		respond "ok"
	}
	handle /plain {
		reverse_proxy %[5]s
	}
	handle /plain2 {
		reverse_proxy %[6]s
	}
	handle /auth {
		mastio_auth
		reverse_proxy %[5]s
	}
	handle /gw {
		mastio_auth
		mastio_mcp weather {
			agent_rate off
			item_rate off
		}
		reverse_proxy %[5]s
	}
	handle /gws {
		mastio_auth
		mastio_mcp weather {
			agent_rate off
			item_rate off
		}
		reverse_proxy %[8]s
	}
	handle /gw2 {
		mastio_auth
		mastio_mcp slow {
			agent_rate off
			item_rate off
		}
		reverse_proxy %[6]s
	}
	mastio
}
`, dir, port, admin, auditSync, fast, slow, adminSecret, sessions)
}

// startGateway runs bin on a fresh directory with audit_sync mode, waits
// for it, and enrolls the benchmark's agent.
func startGateway(bin, auditSync string, up upstreams) (*gateway, error) {
	dir, err := os.MkdirTemp("", "mastio-bench-")
	if err != nil {
		return nil, err
	}
	g := &gateway{bin: bin, dir: dir, port: freePort(), admin: "127.0.0.1:" + freePort()}
	cf := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cf, []byte(caddyfile(dir, g.port, g.admin, auditSync, up.fast, up.slow, up.sessions)), 0o600); err != nil {
		return nil, err
	}
	g.cmd = exec.Command(bin, "run", "--config", cf, "--adapter", "caddyfile")
	g.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	logf, _ := os.Create(filepath.Join(dir, "caddy.log"))
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if pem, err := os.ReadFile(filepath.Join(dir, "data", "pki", "org-ca.crt")); err == nil {
			g.roots = x509.NewCertPool()
			g.roots.AppendCertsFromPEM(pem)
			if resp, err := g.client(nil).Get(g.url("/healthz")); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, fmt.Errorf("caddy did not start:\n%s", logTail(filepath.Join(dir, "caddy.log")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return g, g.enroll()
}

func (g *gateway) url(path string) string { return "https://localhost:" + g.port + path }

func (g *gateway) pid() int { return g.cmd.Process.Pid }

// client is an HTTP client trusting the Org CA, with cert if given.
func (g *gateway) client(cert *tls.Certificate) *http.Client {
	conf := &tls.Config{RootCAs: g.roots}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}
}

// tlsConfig is the agent's TLS configuration for the load generator.
func (g *gateway) tlsConfig() *tls.Config {
	conf := g.id.TLSConfig()
	conf.RootCAs, conf.ServerName = g.roots, "localhost"
	return conf
}

// enroll creates the benchmark's agent through the admin API and keeps
// its identity.
func (g *gateway) enroll() error {
	body, _ := json.Marshal(map[string]any{"agent_name": "bench", "capabilities": []string{"mcp:call"}})
	req, _ := http.NewRequest("POST", g.url("/v1/admin/agents"), bytes.NewReader(body))
	req.Header.Set("X-Admin-Secret", adminSecret)
	resp, err := g.client(nil).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var created struct {
		AgentID    string `json:"agent_id"`
		CertPEM    string `json:"cert_pem"`
		PrivateKey string `json:"private_key_pem"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(raw, &created) != nil {
		return fmt.Errorf("creating the benchmark agent: %d %s", resp.StatusCode, raw)
	}
	idDir := filepath.Join(g.dir, "identity")
	os.MkdirAll(idDir, 0o700)
	ca, _ := os.ReadFile(filepath.Join(g.dir, "data", "pki", "org-ca.crt"))
	meta, _ := json.Marshal(map[string]any{"agent_id": created.AgentID, "capabilities": []string{"mcp:call"}, "site_url": g.url("")})
	for f, content := range map[string]string{client.CertFile: created.CertPEM, client.KeyFile: created.PrivateKey, client.CAFile: string(ca),
		client.MetadataFile: string(meta)} {
		if err := os.WriteFile(filepath.Join(idDir, f), []byte(content), 0o600); err != nil {
			return err
		}
	}
	g.id, err = client.LoadIdentity(idDir)
	return err
}

// halt stops the process and keeps its directory.
func (g *gateway) halt() {
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Signal(os.Interrupt)
		g.cmd.Wait()
		g.cmd = nil
	}
}

// restart starts the gateway again on its directory and returns how long
// it took to answer /healthz.
func (g *gateway) restart() (time.Duration, error) {
	g.halt()
	cf := filepath.Join(g.dir, "Caddyfile")
	start := time.Now()
	g.cmd = exec.Command(g.bin, "run", "--config", cf, "--adapter", "caddyfile")
	g.cmd.Env = append(os.Environ(), "HOME="+g.dir, "XDG_DATA_HOME="+g.dir, "XDG_CONFIG_HOME="+g.dir)
	logf, _ := os.OpenFile(filepath.Join(g.dir, "caddy.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	g.cmd.Stdout, g.cmd.Stderr = logf, logf
	if err := g.cmd.Start(); err != nil {
		return 0, err
	}
	for deadline := start.Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if resp, err := g.client(nil).Get(g.url("/healthz")); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("caddy did not start again:\n%s", logTail(filepath.Join(g.dir, "caddy.log")))
}

func (g *gateway) stop() {
	if g.cmd != nil && g.cmd.Process != nil {
		g.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { g.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			g.cmd.Process.Kill()
		}
	}
	os.RemoveAll(g.dir)
}

func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// upstreams are the loopback MCP servers the gateways forward to: fast
// answers at once, slow after 2 ms, sessions is a stateful MCP server of
// the official Go SDK (sessions stay open until the process ends).
type upstreams struct{ fast, slow, sessions string }

// sessionUpstream is an MCP server of the official Go SDK that keeps a
// session per initialize.
func sessionUpstream() (string, func()) {
	server := mcp.NewServer(&mcp.Implementation{Name: "weather", Version: "1"}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{JSONResponse: true})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }
}

// upstream is a loopback MCP tool server answering every tools/call after
// delay, so the benchmark measures the path, not the tool.
func upstream(delay time.Duration) (string, func()) {
	body := []byte(`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"sunny in Rome"}],"isError":false}}`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if delay > 0 {
			time.Sleep(delay)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }
}

// repoRoot is the module's directory (go run ./bench runs from it, or
// below it).
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run go run ./bench from the caddy-mastio module")
	}
	return filepath.Dir(mod), nil
}

// heapAfterGC collects g's garbage (the heap profile endpoint with gc=1)
// and returns the bytes its heap then has in use.
func (g *gateway) heapAfterGC() (float64, error) {
	for _, path := range []string{"/debug/pprof/heap?gc=1", "/metrics"} {
		resp, err := http.Get("http://" + g.admin + path)
		if err != nil {
			return 0, err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if path != "/metrics" {
			continue
		}
		for _, line := range strings.Split(string(body), "\n") {
			if rest, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
				return strconv.ParseFloat(strings.TrimSpace(rest), 64)
			}
		}
	}
	return 0, fmt.Errorf("no go_memstats_heap_inuse_bytes in the metrics")
}

// logTail is the end of a log, for an error (the directory goes away).
func logTail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}
