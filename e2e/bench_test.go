package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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

// measure sends b.N requests from 8 concurrent workers and reports the
// throughput and the latency percentiles.
func measure(b *testing.B, client *http.Client, url string, header func(i int) http.Header, pid int) {
	workers := 8
	if n, err := strconv.Atoi(os.Getenv("MASTIO_BENCH_WORKERS")); err == nil && n > 0 {
		workers = n
	}
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0 := processCPU(b, pid)
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				req, _ := http.NewRequest("POST", url, bytes.NewReader([]byte(benchCall)))
				if header != nil {
					req.Header = header(i)
				}
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(t0)
				if resp.StatusCode != 200 || !bytes.Contains(body, []byte("sunny in Rome")) {
					b.Errorf("%d %s", resp.StatusCode, body)
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
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
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
	s := exampleServer(b, `
		policy {
			allow capability:mcp:call tools/call weather/*
		}`, `
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
`, "UP="+up.URL, "GOGC="+os.Getenv("MASTIO_BENCH_GOGC")) // GOGC of the server; empty: Go's default
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
	b.Run("direct", func(b *testing.B) { measure(b, plain, up.URL, nil, 0) })
	b.Run("reverse_proxy", func(b *testing.B) { measure(b, mtls, s.url("/plain"), nil, pid) })
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
	b.Run("auth_only", func(b *testing.B) { measure(b, mtls, s.url("/auth"), signed(b, "/auth"), pid) })
	b.Run("gateway", func(b *testing.B) {
		headers := make([]http.Header, b.N)
		for i := range headers {
			proof, err := sess.Proof("POST", s.url("/gw"), tok)
			if err != nil {
				b.Fatal(err)
			}
			headers[i] = http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
		}
		before := eventCounts(b, openDB(b, s.dataDir))["mcp.call"]
		measure(b, mtls, s.url("/gw"), func(i int) http.Header { return headers[i] }, pid)
		// Every call answered was audited first.
		if got := eventCounts(b, openDB(b, s.dataDir))["mcp.call"] - before; got != b.N {
			b.Fatalf("%d calls, %d mcp.call audit rows", b.N, got)
		}
	})
}
