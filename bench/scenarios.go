package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
	"github.com/caddy-mastio/caddy-mastio/internal/loadgen"
)

const toolCall = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","arguments":{"city":"Rome"}}}`

func sunny(status int, body []byte) error {
	if status != 200 || !bytes.Contains(body, []byte("sunny in Rome")) {
		return fmt.Errorf("%d %s", status, body)
	}
	return nil
}

// scenario is one measured path: target(n) prepares n requests.
type scenario struct {
	name   string
	pid    int
	target func(n int) (loadgen.Target, error)
}

// proofs returns a header function with a fresh DPoP proof for each of n
// requests to path, bound to a token of the agent's.
func proofs(g *gateway, method, path string, n int) (func(int) http.Header, error) {
	sess := g.id.Session()
	tok, err := sess.Token(context.Background())
	if err != nil {
		return nil, err
	}
	headers := make([]http.Header, n)
	for i := range headers {
		proof, err := sess.Proof(method, g.url(path), tok)
		if err != nil {
			return nil, err
		}
		headers[i] = http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
	}
	return func(i int) http.Header { return headers[i] }, nil
}

// callScenarios are the tools/call paths of one gateway.
func callScenarios(g *gateway, suffix string, full bool) []scenario {
	mtls := g.tlsConfig()
	call := func(path string) func(int) (loadgen.Target, error) {
		return func(n int) (loadgen.Target, error) {
			h, err := proofs(g, "POST", path, n)
			return loadgen.Target{URL: g.url(path), Body: toolCall, Header: h, TLS: mtls, Check: sunny}, err
		}
	}
	plain := func(path string) func(int) (loadgen.Target, error) {
		return func(int) (loadgen.Target, error) {
			return loadgen.Target{URL: g.url(path), Body: toolCall, TLS: mtls, Check: sunny}, nil
		}
	}
	out := []scenario{
		{"gateway_" + suffix, g.pid(), call("/gw")},
		{"gateway_" + suffix + "_2ms", g.pid(), call("/gw2")},
	}
	if full {
		out = append([]scenario{
			{"reverse_proxy", g.pid(), plain("/plain")},
			{"reverse_proxy_2ms", g.pid(), plain("/plain2")},
			{"mastio_auth", g.pid(), call("/auth")},
		}, out...)
	}
	return out
}

// serviceScenarios are the Mastio's own endpoints on g.
func serviceScenarios(g *gateway) []scenario {
	anon := &tls.Config{RootCAs: g.roots, ServerName: "localhost"}
	return []scenario{
		{"healthz", g.pid(), func(int) (loadgen.Target, error) {
			return loadgen.Target{URL: g.url("/healthz"), Method: "GET", TLS: anon}, nil
		}},
		{"respond", g.pid(), func(int) (loadgen.Target, error) {
			return loadgen.Target{URL: g.url("/respond"), Method: "GET", TLS: anon}, nil
		}},
		{"mint", g.pid(), func(n int) (loadgen.Target, error) { return mintTarget(g, n) }},
		{"enrollment_start", g.pid(), func(n int) (loadgen.Target, error) { return enrollTarget(g, n) }},
	}
}

// mintTarget: n token requests, each with its own single-use assertion and
// a fresh proof carrying the server's nonce.
func mintTarget(g *gateway, n int) (loadgen.Target, error) {
	sess := g.id.Session()
	if _, err := sess.Token(context.Background()); err != nil { // learns the nonce
		return loadgen.Target{}, err
	}
	bodies := make([]string, n)
	headers := make([]http.Header, n)
	for i := range bodies {
		a, err := sess.Assertion("")
		if err != nil {
			return loadgen.Target{}, err
		}
		b, _ := json.Marshal(map[string]string{"client_assertion": a})
		bodies[i] = string(b)
		proof, err := sess.Proof("POST", g.url("/v1/auth/token"), "")
		if err != nil {
			return loadgen.Target{}, err
		}
		headers[i] = http.Header{"Dpop": {proof}}
	}
	return loadgen.Target{URL: g.url("/v1/auth/token"), BodyFor: func(i int) string { return bodies[i] },
		Header: func(i int) http.Header { return headers[i] }, TLS: g.tlsConfig()}, nil
}

// enrollTarget: n enrollment starts, each with a new key and its proof of
// possession, as caddy mastio enroll sends them.
func enrollTarget(g *gateway, n int) (loadgen.Target, error) {
	dpop, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pubJWK, _, err := jwt.PublicJWK(dpop.Public(), "", "", "")
	if err != nil {
		return loadgen.Target{}, err
	}
	jwk, _ := json.Marshal(pubJWK)
	bodies := make([]string, n)
	for i := range bodies {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		spki, _ := x509.MarshalPKIXPublicKey(key.Public())
		sum := sha256.Sum256(spki)
		pop, err := client.SignMessage(key, []byte("enrollment-pop:v1|"+hex.EncodeToString(sum[:])))
		if err != nil {
			return loadgen.Target{}, err
		}
		b, _ := json.Marshal(map[string]any{"pubkey_pem": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})),
			"requester_name": "Bench", "requester_email": "bench@example.com", "dpop_jwk": json.RawMessage(jwk), "pop_signature": pop})
		bodies[i] = string(b)
	}
	return loadgen.Target{URL: g.url("/v1/enrollment/start"), BodyFor: func(i int) string { return bodies[i] },
		TLS: &tls.Config{RootCAs: g.roots, ServerName: "localhost"}}, nil
}

// appendRate measures the audit log alone (durable commits, audit_sync
// full) with writers concurrent appenders for d: rows per second.
func appendRate(writers int, d time.Duration) (float64, error) {
	dir, err := os.MkdirTemp("", "mastio-bench-audit-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(context.Background(), filepath.Join(dir, "audit.db"))
	if err != nil {
		return 0, err
	}
	defer st.Close()
	log := audit.Open(st, audit.Options{})
	defer log.Close()
	var rows atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	start := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if _, err := log.Append(context.Background(), audit.Event{Type: "bench.row", Actor: "bench", Subject: fmt.Sprint(w),
					Details: map[string]any{"n": rows.Load()}}); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				rows.Add(1)
			}
		}(w)
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(rows.Load()) / time.Since(start).Seconds(), nil
}
