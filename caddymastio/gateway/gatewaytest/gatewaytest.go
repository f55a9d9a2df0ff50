// Package gatewaytest serves the MCP gateway over the core for tests,
// without Caddy.
package gatewaytest

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/gateway"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// ServeGateway serves, over TLS: the Mastio's endpoints with the /v1/mcp
// aggregator, and /mcp/<name>/… through the policy filter
// (gateway.Route, with rs) to each configured MCP server, as a Caddyfile
// of mastio, mastio_mcp and reverse_proxy would. hits, if not nil, counts
// the requests it receives.
func ServeGateway(t testing.TB, m *mastio.Mastio, rs gateway.RouteSettings, hits *atomic.Int64) *httptest.Server {
	t.Helper()
	log := zap.NewNop()
	pool := gateway.NewPool(m, func(s string) string { return s })
	t.Cleanup(pool.Close)
	agg := gateway.NewAggregator(m, log, pool)
	t.Cleanup(agg.Close)
	ep := endpoints.New(m, log, endpoints.Routes{"/v1/mcp": agg})
	type route struct {
		filter *gateway.Route
		proxy  *httputil.ReverseProxy
	}
	routes := map[string]route{}
	for name, s := range m.Settings().Servers {
		target, err := url.Parse(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg := rs
		cfg.Server = name
		routes[name] = route{gateway.NewRoute(m, log, cfg), httputil.NewSingleHostReverseProxy(target)}
	}
	return mastiotest.Serve(t, m, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits != nil {
			hits.Add(1)
		}
		if rest, ok := strings.CutPrefix(r.URL.Path, "/mcp/"); ok {
			name, _, _ := strings.Cut(rest, "/")
			if rt, ok := routes[name]; ok {
				next := func(w http.ResponseWriter, r *http.Request) error { rt.proxy.ServeHTTP(w, r); return nil }
				if err := rt.filter.Serve(w, r, next); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
				}
				return
			}
		}
		ep.ServeHTTP(w, r)
	}))
}
