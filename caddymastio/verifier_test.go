package caddymastio

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// tlsPair provisions an app, registers an agent, and returns a server TLS
// config built the way caddytls builds it for `client_auth { mode
// verify_if_given; trust_pool mastio; verifier mastio }`, and the agent's
// certificate.
func tlsPair(t testing.TB) (*tls.Config, tls.Certificate, *App) {
	t.Helper()
	a := &App{DataDir: t.TempDir(), AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	agentCert := mastiotest.NewAgent(t, a.Mastio(), "bench").Identity.Certificate
	pool := &CAPool{certs: append([]*x509.Certificate{a.Mastio().CA().Root()}, a.Mastio().CA().Intermediates()...), pool: x509.NewCertPool()}
	for _, c := range pool.certs {
		pool.pool.AddCert(c)
	}
	v := &Verifier{m: a.Mastio()}
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvCert, err := a.Mastio().CA().IssueServer(pki.ServerCert{PublicKey: srvKey.Public(), DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{srvCert.Raw, a.Mastio().CA().Intermediate().Raw}, PrivateKey: srvKey}},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool.CertPool(),
		// caddytls runs verifiers from VerifyConnection (resumptions too).
		VerifyConnection: func(cs tls.ConnectionState) error {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			return v.VerifyClientCertificate(raw, cs.VerifiedChains)
		},
	}
	return cfg, agentCert, a
}

// tlsServer serves cfg on a loopback port: each connection completes the
// handshake, writes "ok" and closes.
func tlsServer(t testing.TB, cfg *tls.Config) string {
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return l.Addr().String()
}

// handshake dials addr and reads the server's "ok": a refused client
// certificate surfaces here as the server's TLS alert.
func handshake(addr string, cfg *tls.Config) error {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.ReadFull(c, make([]byte, 2))
	return err
}

func TestVerifierAcceptsPinnedAndRefusesRevoked(t *testing.T) {
	srv, cert, a := tlsPair(t)
	addr := tlsServer(t, srv)
	cli := &tls.Config{RootCAs: a.Mastio().CA().RootPool(), ServerName: "localhost", Certificates: []tls.Certificate{cert}}
	if err := handshake(addr, cli); err != nil {
		t.Fatalf("pinned certificate: %v", err)
	}
	if err := handshake(addr, &tls.Config{RootCAs: a.Mastio().CA().RootPool(), ServerName: "localhost"}); err != nil {
		t.Fatalf("no certificate (verify_if_given): %v", err)
	}
	if _, err := a.Mastio().Registry().Revoke(context.Background(), a.Mastio().Registry().AgentID("bench"), "test", "test", nil); err != nil {
		t.Fatal(err)
	}
	err := handshake(addr, cli)
	if err == nil || !strings.Contains(err.Error(), "revoked") && !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("revoked certificate: %v", err)
	}
}

// BenchmarkHandshakeWithClientCert is a full TLS 1.3 handshake over
// loopback TCP (both ends on this machine) in which the client presents its agent
// certificate and the server verifies the chain and the pin.
func BenchmarkHandshakeWithClientCert(b *testing.B) {
	srv, cert, a := tlsPair(b)
	addr := tlsServer(b, srv)
	cli := &tls.Config{RootCAs: a.Mastio().CA().RootPool(), ServerName: "localhost", Certificates: []tls.Certificate{cert},
		SessionTicketsDisabled: true}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := handshake(addr, cli); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkHandshakeWithoutClientCert is the same handshake with no client
// certificate, for comparison.
func BenchmarkHandshakeWithoutClientCert(b *testing.B) {
	srv, _, a := tlsPair(b)
	addr := tlsServer(b, srv)
	cli := &tls.Config{RootCAs: a.Mastio().CA().RootPool(), ServerName: "localhost", SessionTicketsDisabled: true}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := handshake(addr, cli); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}
