package caddymastio

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// benchServer runs Caddy in-process with two routes to the same upstream:
// /open (reverse_proxy) and /guarded (mastio_auth, then reverse_proxy).
func benchServer(b *testing.B) (base string, app *App) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}`)
	}))
	b.Cleanup(up.Close)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	upstream := up.Listener.Addr().String()
	proxy := map[string]any{"handler": "reverse_proxy", "upstreams": []map[string]string{{"dial": upstream}}}
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps": map[string]any{
			"mastio": map[string]any{"data_dir": b.TempDir(), "admin_secret": testSecret},
			"http": map[string]any{"servers": map[string]any{"bench": map[string]any{
				"listen":          []string{addr},
				"automatic_https": map[string]any{"disable": true},
				"routes": []any{
					map[string]any{"match": []any{map[string]any{"path": []string{"/open"}}}, "handle": []any{proxy}},
					map[string]any{"match": []any{map[string]any{"path": []string{"/guarded"}}},
						"handle": []any{map[string]any{"handler": "mastio_auth"}, proxy}},
					map[string]any{"handle": []any{map[string]any{"handler": "mastio"}}},
				},
			}}},
		},
	}
	raw, _ := json.Marshal(cfg)
	if err := caddy.Load(raw, true); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { quietCaddy() })
	v, err := caddy.ActiveContext().App("mastio")
	if err != nil {
		b.Fatal(err)
	}
	return "http://" + addr, v.(*App)
}

func runRequests(b *testing.B, url string, header func(i int) http.Header) {
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	client := &http.Client{Transport: tr}
	var next atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1) - 1)
			req, _ := http.NewRequest("GET", url, nil)
			if header != nil {
				req.Header = header(i)
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkGuardedRequest measures whole requests through Caddy to a
// loopback upstream, client and server on this machine: /open is plain
// reverse_proxy; /guarded adds mastio_auth with a DPoP-bound token and a
// fresh proof per request (signed beforehand, outside the timer, so only
// the server's work is measured) — token verification (cached after the
// first use), proof verification (signature, htu, iat, ath, nonce,
// replay cache) and the revocation check.
func BenchmarkGuardedRequest(b *testing.B) {
	base, app := benchServer(b)
	b.Run("open", func(b *testing.B) { runRequests(b, base+"/open", nil) })
	b.Run("guarded", func(b *testing.B) {
		run := make([]byte, 6)
		rand.Read(run)
		runID := base64.RawURLEncoding.EncodeToString(run)
		agent := mastiotest.NewAgent(b, app.Mastio(), "bench-"+runID, "mcp:call")
		session, err := agent.Identity.NewSession(base, &http.Transport{})
		if err != nil {
			b.Fatal(err)
		}
		tok, err := session.Token(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		dk := agent.Identity.DPoPKey
		jwk, _, _ := jwt.PublicJWK(dk.Public(), "", "", "")
		now := time.Now()
		sum := sha256.Sum256([]byte(tok))
		ath := base64.RawURLEncoding.EncodeToString(sum[:])
		nonce := app.Mastio().Nonce()
		headers := make([]http.Header, b.N)
		for i := range headers {
			proof, err := jwt.Sign(dk, map[string]any{"typ": "dpop+jwt", "jwk": jwk}, map[string]any{
				"jti": fmt.Sprintf("%s-%d", runID, i), "htm": "GET", "htu": base + "/guarded", "iat": now.Unix(), "ath": ath, "nonce": nonce})
			if err != nil {
				b.Fatal(err)
			}
			headers[i] = http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
		}
		runRequests(b, base+"/guarded", func(i int) http.Header { return headers[i] })
	})
}
