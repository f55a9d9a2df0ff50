// Package loadgen is the load generator of the benchmarks (go run ./bench
// and the e2e benchmarks): workers that each keep one HTTP/1.1
// connection and send requests serialized in advance, so that the
// generator takes as little as it can of the CPU it shares with the
// server, and the measures of a run — latency percentiles, calls per
// second, and the CPU the server and the generator each spent per call.
package loadgen

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Target is what a run sends.
type Target struct {
	// URL of the requests (http or https).
	URL string
	// Method (default POST) and Body of every request.
	Method, Body string
	// BodyFor, when set, is request i's body instead of Body (requests
	// that must differ: single-use assertions, new keys). It runs before
	// the clock starts.
	BodyFor func(i int) string
	// Header returns request i's extra headers (nil: none). It runs
	// before the clock starts.
	Header func(i int) http.Header
	// TLS is the client's TLS configuration for https (a client
	// certificate, the roots).
	TLS *tls.Config
	// Check reads an answer; nil accepts any 2xx.
	Check func(status int, body []byte) error
}

// Result is a run's measures.
type Result struct {
	Calls    int
	Workers  int
	Elapsed  time.Duration
	P50, P99 time.Duration
	// Latencies are every call's, sorted (for merging runs).
	Latencies []time.Duration
	// CallsPerS is Calls over Elapsed.
	CallsPerS float64
	// ServerCPU and ClientCPU are the CPU time (user+system) the server
	// process and this process spent per call.
	ServerCPU, ClientCPU time.Duration
}

// Run sends n requests to t from workers connections and measures them;
// serverPID (0: none) is the process whose CPU is charged to the calls.
func Run(t Target, n, workers int, serverPID int) (Result, error) {
	requests, err := serialize(t, n)
	if err != nil {
		return Result{}, err
	}
	u, _ := url.Parse(t.URL)
	lat := make([]time.Duration, n)
	// The prepared requests stay alive for the run: collect the
	// generator's garbage less often, so its GC leaves the cores alone.
	defer debug.SetGCPercent(debug.SetGCPercent(800))
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	cpu0, self0 := ProcessCPU(serverPID), ProcessCPU(os.Getpid())
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := worker(u, t, requests, &next, lat); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		return Result{}, err
	}
	res := Result{Calls: n, Workers: workers, Elapsed: elapsed, CallsPerS: float64(n) / elapsed.Seconds(),
		ClientCPU: (ProcessCPU(os.Getpid()) - self0) / time.Duration(n)}
	if serverPID != 0 {
		res.ServerCPU = (ProcessCPU(serverPID) - cpu0) / time.Duration(n)
	}
	slices.Sort(lat)
	res.Latencies = lat
	res.P50, res.P99 = Percentile(lat, 50), Percentile(lat, 99)
	return res, nil
}

// serialize writes request i of the run as HTTP/1.1 bytes.
func serialize(t Target, n int) ([][]byte, error) {
	u, err := url.Parse(t.URL)
	if err != nil {
		return nil, err
	}
	method := t.Method
	if method == "" {
		method = "POST"
	}
	out := make([][]byte, n)
	for i := range out {
		body := t.Body
		if t.BodyFor != nil {
			body = t.BodyFor(i)
		}
		var buf bytes.Buffer
		fmt.Fprintf(&buf, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, u.RequestURI(), u.Host)
		if body != "" || method == "POST" {
			fmt.Fprintf(&buf, "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: %d\r\n", len(body))
		}
		if t.Header != nil {
			t.Header(i).Write(&buf)
		}
		buf.WriteString("\r\n" + body)
		out[i] = buf.Bytes()
	}
	return out, nil
}

// worker sends requests over one keep-alive connection and reads each
// answer with net/http's parser: no pool, no goroutine per request.
func worker(u *url.URL, t Target, requests [][]byte, next *atomic.Int64, lat []time.Duration) error {
	dial := func() (net.Conn, *bufio.Reader, error) {
		var c net.Conn
		var err error
		if u.Scheme == "https" {
			c, err = tls.Dial("tcp", u.Host, t.TLS)
		} else {
			c, err = net.Dial("tcp", u.Host)
		}
		if err != nil {
			return nil, nil, err
		}
		return c, bufio.NewReader(c), nil
	}
	conn, br, err := dial()
	if err != nil {
		return err
	}
	defer func() { conn.Close() }()
	for {
		i := int(next.Add(1) - 1)
		if i >= len(requests) {
			return nil
		}
		t0 := time.Now()
		if _, err := conn.Write(requests[i]); err != nil {
			return err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		lat[i] = time.Since(t0)
		if err != nil {
			return err
		}
		if t.Check != nil {
			err = t.Check(resp.StatusCode, body)
		} else if resp.StatusCode/100 != 2 {
			err = fmt.Errorf("%d %s", resp.StatusCode, body)
		}
		if err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		if resp.Close {
			conn.Close()
			if conn, br, err = dial(); err != nil {
				return err
			}
		}
	}
}

// ProcessCPU is the user+system CPU time pid has used (0 for pid 0 or a
// process that cannot be read).
func ProcessCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of stat(5), in clock ticks (USER_HZ, 100 on Linux).
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// Percentile is the p-th percentile of sorted (0 if it is empty).
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[len(sorted)*p/100]
}
