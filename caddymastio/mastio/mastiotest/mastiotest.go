// Package mastiotest runs the core for tests of the surfaces over it
// (endpoints, the admin API, the MCP gateway), without Caddy: a Mastio on
// a temporary data directory with a real SQLite file, agents created
// through it, and a real TLS server in front of a handler, so that
// agents present real client certificates.
package mastiotest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// AdminSecret is the admin secret of a Mastio New opens without one.
const AdminSecret = "3f9c2a7d41b8e6054c1d9a2f7e8b3c61"

// New opens a Mastio on a temporary data directory, closed when the test
// ends; s is completed with AdminSecret when it names none. log may be nil.
func New(t testing.TB, s mastio.Settings, log *zap.Logger) *mastio.Mastio {
	t.Helper()
	if log == nil {
		log = zap.NewNop()
	}
	dir := t.TempDir()
	shared, err := mastio.Prepare(mastio.Location{DataDir: dir, Database: mastio.Database(filepath.Join(dir, "mastio.db"))}, "", log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shared.Close() })
	if err := shared.Open(); err != nil {
		t.Fatal(err)
	}
	if s.AdminSecret == nil {
		if s.AdminSecret, err = mastio.NewSecret(AdminSecret); err != nil {
			t.Fatal(err)
		}
	}
	m, err := shared.With(s, log)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Agent is an agent created through the core, with its key.
type Agent struct {
	ID       string
	Issued   *registry.Issued
	Identity *client.Identity
}

// NewAgent creates an agent with capabilities; the Mastio generates its
// key.
func NewAgent(t testing.TB, m *mastio.Mastio, name string, capabilities ...string) *Agent {
	t.Helper()
	iss, err := m.CreateAgent(t.Context(), registry.NewAgent{Name: name, Capabilities: capabilities, Method: "admin", Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair([]byte(iss.CertPEM), []byte(iss.KeyPEM))
	if err != nil {
		t.Fatal(err)
	}
	dpopKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := &client.Identity{AgentID: iss.Agent.AgentID, Capabilities: capabilities, Certificate: cert, Leaf: iss.Cert,
		DPoPKey: dpopKey, RootCAs: m.CA().RootPool()}
	return &Agent{ID: iss.Agent.AgentID, Issued: iss, Identity: id}
}

// Session is the agent's DPoP session with the Mastio at srv, over TLS
// with its client certificate.
func (a *Agent) Session(t testing.TB, srv *httptest.Server) *client.Session {
	t.Helper()
	s, err := a.Identity.NewSession(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Serve serves h over TLS on loopback with a server certificate of m's
// Org CA, asking for (not requiring) client certificates, as Caddy does
// in front of the Mastio. It is closed when the test ends.
func Serve(t testing.TB, m *mastio.Mastio, h http.Handler) *httptest.Server {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf, err := m.CA().IssueServer(pki.ServerCert{PublicKey: key.Public(), IPs: []string{"127.0.0.1"}, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener, err = net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leaf.Raw, m.CA().Intermediate().Raw}, PrivateKey: key}},
		ClientAuth:   tls.RequestClientCert,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// Client is an HTTP client of srv that trusts the Org CA and presents no
// client certificate.
func Client(m *mastio.Mastio) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: m.CA().RootPool()}}}
}

// Events returns the audit records of type typ (every one for ""), oldest
// first.
func Events(t testing.TB, m *mastio.Mastio, typ string) []audit.Record {
	t.Helper()
	var out []audit.Record
	err := m.ReadAudit(t.Context(), 1, func(r audit.Record) error {
		if typ == "" || r.Type == typ {
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Details decodes an audit record's details.
func Details(t testing.TB, r audit.Record) map[string]any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(r.Details, &d); err != nil {
		t.Fatal(err)
	}
	return d
}
