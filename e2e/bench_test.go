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
	"strconv"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/internal/loadgen"
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

// measure sends b.N requests from 8 workers (or MASTIO_BENCH_WORKERS),
// each on its own keep-alive connection (package loadgen), and reports
// the throughput, the latency percentiles and the CPU per call.
func measure(b *testing.B, tlsConf *tls.Config, url, body string, header func(i int) http.Header, pid int) {
	workers := 8
	if n, err := strconv.Atoi(os.Getenv("MASTIO_BENCH_WORKERS")); err == nil && n > 0 {
		workers = n
	}
	b.ResetTimer()
	res, err := loadgen.Run(loadgen.Target{URL: url, Body: body, Header: header, TLS: tlsConf, Check: sunny}, b.N, workers, pid)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if pid != 0 {
		b.ReportMetric(float64(res.ServerCPU.Microseconds()), "server-cpu-µs/call")
	}
	// The load generator and the upstream share the machine with the server.
	b.ReportMetric(float64(res.ClientCPU.Microseconds()), "bench-cpu-µs/call")
	b.ReportMetric(res.CallsPerS, "calls/s")
	b.ReportMetric(float64(res.P50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
}

// sunny accepts the tool's result.
func sunny(status int, body []byte) error {
	if status != 200 || !bytes.Contains(body, []byte("sunny in Rome")) {
		return fmt.Errorf("%d %s", status, body)
	}
	return nil
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
	mtls := id.TLSConfig()
	mtls.RootCAs = s.rootPool()

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
	b.Run("direct", func(b *testing.B) { measure(b, nil, up.URL, benchCall, nil, 0) })
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
		// Every call answered had its mcp.forward row committed first (its
		// mcp.call row may still be riding towards the next commit). A
		// batch's rows share one timestamp, so distinct timestamps count
		// the commits.
		var forwards, rows, commits int
		if err := db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'mcp.forward' AND seq > ?`, seq0).Scan(&forwards); err != nil {
			b.Fatal(err)
		}
		if forwards != b.N {
			b.Fatalf("%d calls, %d mcp.forward audit rows", b.N, forwards)
		}
		db.QueryRow(`SELECT COUNT(*), COUNT(DISTINCT time) FROM audit_events WHERE seq > ?`, seq0).Scan(&rows, &commits)
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
