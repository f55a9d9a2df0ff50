package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestSlowAndOversizedHeadersAreBounded: a client that trickles its
// request headers (slowloris) is cut off once read_header has passed, and
// headers beyond max_header_size are answered 431, as Caddyfile.example
// configures them (read_header shortened to 1 s here).
func TestSlowAndOversizedHeadersAreBounded(t *testing.T) {
	s := exampleServer(t, "", "", "MASTIO_READ_HEADER_TIMEOUT=1s")
	conn, err := tls.Dial("tcp", strings.TrimPrefix(s.url(""), "https://"), &tls.Config{RootCAs: s.rootPool(), ServerName: "localhost",
		NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
	closed := false
	for i := 0; i < 40 && !closed; i++ { // 40 lines at 200 ms: 8 s if nobody stops us
		time.Sleep(200 * time.Millisecond)
		if _, err := fmt.Fprintf(conn, "X-Slow-%d: x\r\n", i); err != nil {
			closed = true
		}
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(conn)
	took := time.Since(start)
	if !closed && err != nil && !strings.Contains(err.Error(), "reset") && !strings.Contains(err.Error(), "closed") {
		t.Fatalf("the trickling connection was not closed: %v after %s", err, took)
	}
	if strings.Contains(string(rest), "200 OK") {
		t.Fatalf("a request whose headers took %s was served", took)
	}
	if took > 8*time.Second {
		t.Fatalf("the trickling connection lived %s", took)
	}
	t.Logf("a slowloris connection was cut after %s (read_header 1s)", took.Round(100*time.Millisecond))

	big := func(h2 bool) (int, error) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.rootPool()}, ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", s.url("/healthz"), nil)
		req.Header.Set("X-Big", strings.Repeat("a", 70<<10))
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, bufio.NewReader(resp.Body))
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := big(false); code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("70 KB of headers over HTTP/1.1: %d %v, want 431", code, err)
	}
	// HTTP/2 refuses the header block at the protocol level (GOAWAY).
	if code, err := big(true); err == nil && code != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("70 KB of headers over HTTP/2: %d, want 431 or a refused stream", code)
	}
	if code, _, _ := s.get(s.client(), "/healthz"); code != 200 {
		t.Fatalf("a normal request after: %d", code)
	}
}
