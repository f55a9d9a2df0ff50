package admin

import (
	"net"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// CaddyAdminPrefix is where the admin operations are mounted on Caddy's
// admin endpoint: /v1/admin/X there is /mastio/X here.
const CaddyAdminPrefix = "/mastio/"

// CaddyAdminActor is the audit actor of operations made there.
const CaddyAdminActor = "caddy-admin"

// CaddyAdminHandler serves the admin operations under CaddyAdminPrefix for
// Caddy's admin endpoint, which has its own access control (no admin
// secret here). running returns the configuration in force at request
// time — the endpoint outlives config reloads — or nil, answered 503.
// The router is built once.
func CaddyAdminHandler(running func() *mastio.Mastio, log *zap.Logger) http.Handler {
	mux := http.NewServeMux()
	for pattern, op := range operations {
		method, path, _ := strings.Cut(pattern, " ")
		rest, ok := strings.CutPrefix(path, "/v1/admin/")
		if !ok {
			continue // the runbook's aliases stay on the site
		}
		mux.HandleFunc(method+" "+CaddyAdminPrefix+rest, func(w http.ResponseWriter, r *http.Request) {
			m := running()
			if m == nil {
				httpjson.Error(w, http.StatusServiceUnavailable, "mastio_not_configured",
					"no mastio app is running in Caddy's current configuration")
				return
			}
			ip, _, _ := net.SplitHostPort(r.RemoteAddr)
			c := Caller{Actor: CaddyAdminActor, RemoteIP: ip}
			op(New(m, log), w, c.bind(r), c)
		})
	}
	mux.HandleFunc(CaddyAdminPrefix, func(w http.ResponseWriter, r *http.Request) {
		httpjson.Error(w, http.StatusNotFound, "not_found", "no such mastio admin operation: "+r.Method+" "+r.URL.Path)
	})
	return mux
}
