package gateway_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway/gatewaytest"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
	"github.com/caddy-mastio/caddy-mastio/internal/mcptest"
)

// An upstream that requires mTLS with a certificate from the Org CA: the
// Mastio presents its workload certificate, and the upstream sees its
// SPIFFE ID.
func TestAggregatorReachesAnUpstreamThatRequiresMTLS(t *testing.T) {
	server := mcpsdk.NewServer(&mcpsdk.Implementation{Name: "guarded", Version: "1"}, nil)
	mcpsdk.AddTool(server, &mcpsdk.Tool{Name: "whoami"}, func(ctx context.Context, req *mcpsdk.CallToolRequest, _ struct{}) (*mcpsdk.CallToolResult, any, error) {
		return mcptest.Text(req.Extra.Header.Get("X-Peer")), nil, nil
	})
	mcp := mcpsdk.NewStreamableHTTPHandler(func(*http.Request) *mcpsdk.Server { return server }, nil)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("X-Peer", r.TLS.PeerCertificates[0].URIs[0].String())
		mcp.ServeHTTP(w, r)
	}))
	up.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert}
	up.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are expected
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")

	servers := map[string]*mastio.Server{
		"guarded":   {ClientCertificate: true, CAFile: caFile},
		"nocert":    {CAFile: caFile},          // no client certificate: refused by the upstream
		"untrusted": {ClientCertificate: true}, // the upstream's certificate is not from a trusted CA
	}
	// The upstream trusts the Org CA, which the Mastio creates: start it
	// once the Mastio exists, and point the servers at it.
	m := mastiotest.New(t, mastio.Settings{Policy: "allow * tools/call */whoami\n"}, nil)
	up.TLS.ClientCAs = m.CA().RootPool()
	up.StartTLS()
	t.Cleanup(up.Close)
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, s := range servers {
		s.URL = up.URL
		if err := m.PutServer(context.Background(), name, s, "", nil); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{t: t, m: m, srv: gatewaytest.ServeGateway(t, m, gateway.RouteSettings{}, nil)}
	a := mastiotest.NewAgent(t, m, "guarded-user", "mcp:call")
	cs := e.session(a, stateful, nil)
	if got := strings.Join(toolNames(t, cs), ","); got != "guarded.whoami" {
		t.Fatalf("tools: %s (only the server reached with the workload certificate and a trusted server certificate)", got)
	}
	res, err := cs.CallTool(context.Background(), &mcpsdk.CallToolParams{Name: "guarded.whoami", Arguments: map[string]any{}})
	if err != nil || mcptest.TextOf(res) != m.WorkloadSPIFFEID().String() {
		t.Fatalf("the upstream saw %q (%v), want %s", mcptest.TextOf(res), err, m.WorkloadSPIFFEID())
	}
}
