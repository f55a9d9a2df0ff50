package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const benchCall = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","arguments":{"city":"Rome"}}}`

// fastUpstream answers every tools/call at once with a small result, so
// the benchmark measures the path, not the tool.
func fastUpstream(b *testing.B) *httptest.Server {
	body := []byte(`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"sunny in Rome"}],"isError":false}}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	b.Cleanup(srv.Close)
	return srv
}

// measure sends b.N requests from 8 concurrent workers (or
// MASTIO_BENCH_WORKERS) and reports the throughput and the latency
// percentiles. The load generator is net/http's client, or with
// MASTIO_BENCH_CLIENT=lean a minimal HTTP/1.1 client over the same mTLS
// (see leanWorker), which leaves more of the shared CPU to the server.
func measure(b *testing.B, client *http.Client, url, body string, header func(i int) http.Header, pid int) {
	workers := 8
	if n, err := strconv.Atoi(os.Getenv("MASTIO_BENCH_WORKERS")); err == nil && n > 0 {
		workers = n
	}
	lean := os.Getenv("MASTIO_BENCH_CLIENT") == "lean"
	var requests [][]byte
	if lean {
		requests = leanRequests(b, url, body, header)
	}
	lat := make([]time.Duration, b.N)
	// The load generator keeps every prepared request alive; collect its
	// garbage less often, so that its GC does not eat the shared cores.
	defer debug.SetGCPercent(debug.SetGCPercent(800))
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0, self0 := processCPU(b, pid), processCPU(b, os.Getpid())
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		if lean {
			go func() {
				defer wg.Done()
				leanWorker(b, client, url, requests, &next, lat)
			}()
			continue
		}
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				req, _ := http.NewRequest("POST", url, strings.NewReader(body))
				if header != nil {
					req.Header = header(i)
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				t0 := time.Now()
				resp, err := client.Do(req)
				ok := readAnswer(b, resp, err)
				lat[i] = time.Since(t0)
				if !ok {
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if pid != 0 {
		b.ReportMetric(float64((processCPU(b, pid)-cpu0).Microseconds())/float64(b.N), "server-cpu-µs/call")
	}
	// The load generator and the upstream share the machine with the server.
	b.ReportMetric(float64((processCPU(b, os.Getpid())-self0).Microseconds())/float64(b.N), "bench-cpu-µs/call")
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// readAnswer reads a call's answer (or takes its error) and reports
// whether it is the tool's result.
func readAnswer(b *testing.B, resp *http.Response, err error) bool {
	if err != nil {
		b.Error(err)
		return false
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("sunny in Rome")) {
		b.Errorf("%d %s", resp.StatusCode, body)
		return false
	}
	return true
}

// leanRequests serializes request i of the run as HTTP/1.1 bytes.
func leanRequests(b *testing.B, rawURL, body string, header func(i int) http.Header) [][]byte {
	u, err := url.Parse(rawURL)
	if err != nil {
		b.Fatal(err)
	}
	out := make([][]byte, b.N)
	for i := range out {
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: %d\r\n",
			u.RequestURI(), u.Host, len(body))
		if header != nil {
			header(i).Write(&buf)
		}
		buf.WriteString("\r\n" + body)
		out[i] = buf.Bytes()
	}
	return out
}

// leanWorker sends requests over one keep-alive connection, dialled with
// the client's TLS settings, and reads each answer with net/http's parser:
// no connection pool, no per-request goroutines.
func leanWorker(b *testing.B, client *http.Client, rawURL string, requests [][]byte, next *atomic.Int64, lat []time.Duration) {
	u, _ := url.Parse(rawURL)
	var tlsConf *tls.Config
	if tr, ok := client.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		tlsConf = tr.TLSClientConfig.Clone()
	}
	dial := func() (net.Conn, *bufio.Reader) {
		var c net.Conn
		var err error
		if u.Scheme == "https" {
			c, err = tls.Dial("tcp", u.Host, tlsConf)
		} else {
			c, err = net.Dial("tcp", u.Host)
		}
		if err != nil {
			b.Error(err)
			return nil, nil
		}
		return c, bufio.NewReader(c)
	}
	conn, br := dial()
	if conn == nil {
		return
	}
	defer func() { conn.Close() }()
	for {
		i := int(next.Add(1) - 1)
		if i >= len(requests) {
			return
		}
		t0 := time.Now()
		if _, err := conn.Write(requests[i]); err != nil {
			b.Error(err)
			return
		}
		resp, err := http.ReadResponse(br, nil)
		ok := readAnswer(b, resp, err)
		lat[i] = time.Since(t0)
		if !ok {
			return
		}
		if resp.Close {
			conn.Close()
			if conn, br = dial(); conn == nil {
				return
			}
		}
	}
}

// processCPU is the user+system CPU time pid has used (0 for pid 0).
func processCPU(b *testing.B, pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of stat(5), in clock ticks (USER_HZ, 100 on Linux).
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// BenchmarkMCPToolCall: one tools/call, direct to the upstream, through a
// plain reverse_proxy route, and through the gateway (mastio_auth with a
// DPoP-bound token over mTLS, mastio_mcp policy, durable audit row per
// call). Proofs are signed before the timer starts.
func BenchmarkMCPToolCall(b *testing.B) {
	up := fastUpstream(b)
	global := `
		policy {
			allow capability:mcp:call tools/call weather/*
		}
		mcp_server weather {
			url {$MCP_UP}/mcp
			agent_rate off
			item_rate off
		}`
	// MASTIO_BENCH_AUDIT_SYNC=os measures the gateway with audit_sync os.
	if v := os.Getenv("MASTIO_BENCH_AUDIT_SYNC"); v != "" {
		global += "\n\t\taudit_sync " + v
	}
	s := exampleServer(b, global, `
	handle /plain {
		reverse_proxy {$UP}
	}
	handle /auth {
		mastio_auth
		reverse_proxy {$UP}
	}
	handle /gw {
		mastio_auth
		mastio_mcp weather {
			agent_rate off
			item_rate off
		}
		reverse_proxy {$UP}
	}
`, "UP="+up.URL, "MCP_UP="+sdkUpstream(b).URL, "GOGC="+os.Getenv("MASTIO_BENCH_GOGC")) // GOGC of the server; empty: Go's default
	b.Cleanup(s.kill)
	id := makeIdentity(b, s, "bench", "mcp:call")
	sess := id.Session()
	tok, err := sess.Token(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	mtls := &http.Client{Transport: &http.Transport{TLSClientConfig: id.TLSConfig(), MaxIdleConnsPerHost: 16, ForceAttemptHTTP2: false,
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	plain := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}

	if prof := os.Getenv("MASTIO_BENCH_PROFILE"); prof != "" {
		// Investigation aid: a CPU profile of the server for the next 10 s.
		go func() {
			resp, err := http.Get("http://" + s.adminAddr + "/debug/pprof/" + prof)
			if err == nil {
				data, _ := io.ReadAll(resp.Body)
				os.WriteFile("/tmp/mastio-server.prof", data, 0o644)
			}
		}()
	}
	pid := s.cmd.Process.Pid
	b.Run("direct", func(b *testing.B) { measure(b, plain, up.URL, benchCall, nil, 0) })
	b.Run("reverse_proxy", func(b *testing.B) { measure(b, mtls, s.url("/plain"), benchCall, nil, pid) })
	signed := func(b *testing.B, path string) func(int) http.Header {
		headers := make([]http.Header, b.N)
		for i := range headers {
			proof, err := sess.Proof("POST", s.url(path), tok)
			if err != nil {
				b.Fatal(err)
			}
			headers[i] = http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
		}
		return func(i int) http.Header { return headers[i] }
	}
	b.Run("auth_only", func(b *testing.B) { measure(b, mtls, s.url("/auth"), benchCall, signed(b, "/auth"), pid) })
	b.Run("gateway", func(b *testing.B) {
		headers := make([]http.Header, b.N)
		for i := range headers {
			proof, err := sess.Proof("POST", s.url("/gw"), tok)
			if err != nil {
				b.Fatal(err)
			}
			headers[i] = http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
		}
		db := openDB(b, s.dataDir)
		var seq0 int64
		if err := db.QueryRow(`SELECT COALESCE(MAX(seq), 0) FROM audit_events`).Scan(&seq0); err != nil {
			b.Fatal(err)
		}
		measure(b, mtls, s.url("/gw"), benchCall, func(i int) http.Header { return headers[i] }, pid)
		// Every call answered was audited first. A batch's rows share one
		// timestamp, so distinct timestamps count the commits.
		var rows, commits int
		if err := db.QueryRow(`SELECT COUNT(*), COUNT(DISTINCT time) FROM audit_events WHERE event_type = 'mcp.call' AND seq > ?`,
			seq0).Scan(&rows, &commits); err != nil {
			b.Fatal(err)
		}
		if rows != b.N {
			b.Fatalf("%d calls, %d mcp.call audit rows", b.N, rows)
		}
		b.ReportMetric(float64(rows)/float64(commits), "rows/commit")
	})
	// The aggregator, as the original SDK uses it: a sessionless tools/call
	// to /v1/mcp, answered in JSON, through the Mastio's own session with
	// a go-sdk upstream (JSON answers).
	b.Run("aggregator", func(b *testing.B) {
		call := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather.get_forecast","arguments":{"city":"Rome"}}}`
		measure(b, mtls, s.url("/v1/mcp"), call, signed(b, "/v1/mcp"), pid)
	})
}

// sdkUpstream is an MCP server of the official Go SDK with the one tool
// get_forecast, answering in JSON, for the aggregator's benchmark.
func sdkUpstream(b *testing.B) *httptest.Server {
	server := mcp.NewServer(&mcp.Implementation{Name: "weather", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "get_forecast"}, func(ctx context.Context, req *mcp.CallToolRequest, in struct {
		City string `json:"city"`
	}) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "sunny in " + in.City}}}, nil, nil
	})
	srv := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server },
		&mcp.StreamableHTTPOptions{JSONResponse: true}))
	b.Cleanup(srv.Close)
	return srv
}
