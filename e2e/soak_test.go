package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

// Soak bounds: after the warm-up, a soak may grow the process by at most
// this much (the README states them).
const (
	soakRSSGrowthMiB   = 64
	soakGoroutineSlack = 64
	soakFDSlack        = 64
)

// TestSoak runs mixed traffic — agent calls over kept connections, token
// mints with DPoP-bound calls on new connections, agents created and
// revoked — for $MASTIO_SOAK (default 60s; the 10-minute run is
// MASTIO_SOAK=10m go test -run TestSoak ./e2e/), with `caddy reload --force`
// every 3 s, sampling the gateway's RSS, goroutines and open files every
// 5 s: no request may fail, and none of the three may grow beyond the
// stated bounds after the warm-up.
func TestSoak(t *testing.T) {
	dur := 60 * time.Second
	if v := os.Getenv("MASTIO_SOAK"); v != "" {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			t.Fatalf("MASTIO_SOAK: %v", err)
		}
	}
	s := exampleServer(t, "", "")
	caller := makeIdentity(t, s, "soak-caller", "api:read")
	var requests, failures, retries atomic.Int64
	var lastFailure atomic.Value
	fail := func(what string, err error, code int) {
		failures.Add(1)
		lastFailure.Store(fmt.Sprintf("%s: %d %v", what, code, err))
	}
	traffic := newLoad()
	kept := newAgentClient(s, caller.Certificate, true)
	traffic.loop(func(int) {
		code, _, err := kept.get(t, "/v1/agents/me")
		if err != nil && kept.reused { // a kept connection closed by a reload as the request left: clients retry
			retries.Add(1)
			code, _, err = kept.get(t, "/v1/agents/me")
		}
		requests.Add(1)
		if err != nil || code != 200 {
			fail("agent call", err, code)
		}
	})
	traffic.loop(func(int) {
		tlsConf := caller.TLSConfig()
		tlsConf.RootCAs = s.rootPool()
		tr := &http.Transport{TLSClientConfig: tlsConf, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections() // a client that leaves connections open is not the gateway's leak
		sess, err := caller.NewSession(s.url(""), tr)
		if err != nil {
			t.Error(err)
			return
		}
		attempt := func() (int, error) {
			tok, err := sess.Token(t.Context())
			if err != nil {
				return 0, err
			}
			proof, err := sess.Proof("GET", s.url("/whoami"), tok)
			if err != nil {
				return 0, err
			}
			req, _ := http.NewRequest("GET", s.url("/whoami"), nil)
			req.Header.Set("Authorization", "DPoP "+tok)
			req.Header.Set("DPoP", proof)
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				return 0, err
			}
			resp.Body.Close()
			return resp.StatusCode, nil
		}
		code, err := attempt()
		var apiErr *client.APIError
		if err != nil && !errors.As(err, &apiErr) {
			// A connection the old configuration accepted can be closed
			// by the reload before its request is read (EOF, reset); a
			// client retries that once on a new connection, as in
			// TestReloadKeepsServingAndLosesNothing. An HTTP error is
			// never retried.
			retries.Add(1)
			tr.CloseIdleConnections()
			code, err = attempt()
		}
		requests.Add(1)
		if err != nil || code != 200 {
			fail("token and call", err, code)
		}
	})
	var n atomic.Int64
	adminClient := s.client()
	admin := func(path string, body any) (int, error) {
		code, _, err := s.tryAdmin(adminClient, "POST", path, body)
		if err != nil { // a connection a reload closed: retried once, counted
			retries.Add(1)
			adminClient.CloseIdleConnections()
			code, _, err = s.tryAdmin(adminClient, "POST", path, body)
		}
		return code, err
	}
	traffic.loop(func(int) {
		name := fmt.Sprintf("soak-%d", n.Add(1))
		code, err := admin("/v1/admin/agents", map[string]any{"agent_name": name})
		requests.Add(1)
		if err != nil || code != 201 {
			fail("create", err, code)
			return
		}
		code, err = admin("/v1/admin/agents/orga::"+name+"/revoke", map[string]any{"reason": "soak"})
		requests.Add(1)
		if err != nil || code != 200 {
			fail("revoke", err, code)
		}
		time.Sleep(50 * time.Millisecond)
	})

	type sample struct {
		at                      time.Duration
		rssMiB, heapMiB, sysMiB float64
		goroutines, fds         int
		requests, failures      int64
	}
	var samples []sample
	take := func(at time.Duration) sample {
		smp := sample{at: at, rssMiB: rssMiB(t, s.cmd.Process.Pid), fds: openFiles(t, s.cmd.Process.Pid),
			requests: requests.Load(), failures: failures.Load()}
		smp.goroutines, smp.heapMiB, smp.sysMiB = goMetrics(t, s)
		samples = append(samples, smp)
		return smp
	}
	start := time.Now()
	warmup := max(10*time.Second, dur/6)
	var base sample
	reloads := 0
	for next := 5 * time.Second; time.Since(start) < dur; {
		time.Sleep(3 * time.Second)
		if out, err := s.runCaddy("reload", "--force", "--config", filepath.Join(s.dir, "Caddyfile"), "--adapter", "caddyfile",
			"--address", s.adminAddr); err != nil {
			t.Fatalf("caddy reload: %v\n%s", err, out)
		}
		reloads++
		if el := time.Since(start); el >= next {
			smp := take(el.Round(time.Second))
			if base.at == 0 && el >= warmup {
				base = smp
			}
			next += 5 * time.Second
		}
	}
	traffic.halt()
	end := take(time.Since(start).Round(time.Second))
	if path := os.Getenv("MASTIO_SOAK_HEAP"); path != "" {
		// Investigation aid: the gateway's heap profile at the end.
		_, heap := s.admin("GET", "/debug/pprof/heap", nil)
		os.WriteFile(path, []byte(heap), 0o644)
	}
	var table strings.Builder
	for _, smp := range samples {
		fmt.Fprintf(&table, "  %6s  rss %6.1f MiB (Go heap %5.1f, Go in all %5.1f)  goroutines %4d  fds %3d  requests %6d  failures %d\n",
			smp.at, smp.rssMiB, smp.heapMiB, smp.sysMiB, smp.goroutines, smp.fds, smp.requests, smp.failures)
	}
	t.Logf("soak of %s, %d reloads, %d requests retried once on a connection a reload closed:\n%s", dur, reloads, retries.Load(), table.String())
	if f := failures.Load(); f > 0 {
		t.Fatalf("%d of %d requests failed; last: %v", f, requests.Load(), lastFailure.Load())
	}
	if base.at == 0 {
		base = samples[0]
	}
	if end.rssMiB > base.rssMiB+soakRSSGrowthMiB {
		t.Errorf("RSS grew from %.1f to %.1f MiB after the warm-up (bound: +%d MiB)", base.rssMiB, end.rssMiB, soakRSSGrowthMiB)
	}
	if end.goroutines > base.goroutines+soakGoroutineSlack {
		t.Errorf("goroutines grew from %d to %d after the warm-up (bound: +%d)", base.goroutines, end.goroutines, soakGoroutineSlack)
	}
	if end.fds > base.fds+soakFDSlack {
		t.Errorf("open files grew from %d to %d after the warm-up (bound: +%d)", base.fds, end.fds, soakFDSlack)
	}
}

func rssMiB(t *testing.T, pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(rest)[0])
			return float64(kb) / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func openFiles(t *testing.T, pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("open files of the gateway: %v", err)
	}
	return len(entries)
}

// goMetrics reads the gateway's goroutines, and the MiB its Go heap has
// in use and has taken from the OS in all (go_memstats_sys_bytes): RSS
// beyond that is memory outside the Go runtime (SQLite's page caches).
func goMetrics(t *testing.T, s *server) (goroutines int, heapMiB, sysMiB float64) {
	_, body := s.admin("GET", "/metrics", nil)
	value := func(name string) float64 {
		for _, line := range strings.Split(body, "\n") {
			if rest, ok := strings.CutPrefix(line, name+" "); ok {
				v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
				return v
			}
		}
		t.Fatalf("no %s in the metrics", name)
		return 0
	}
	return int(value("go_goroutines")), value("go_memstats_heap_inuse_bytes") / (1 << 20), value("go_memstats_sys_bytes") / (1 << 20)
}
