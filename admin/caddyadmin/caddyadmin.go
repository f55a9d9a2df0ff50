// Package caddyadmin mounts the Mastio's admin operations on Caddy's admin
// endpoint (admin.api.mastio): localhost:2019/mastio/agents, ... — the
// same operations as /v1/admin/... on the site, without the admin secret,
// behind the admin endpoint's own access control.
package caddyadmin

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

func init() {
	caddy.RegisterModule(Router{})
}

// Router is the admin.api.mastio module. Caddy loads every admin.api
// module by itself, with no configuration, before any app: it finds the
// running mastio app at request time and answers 503 while there is none.
type Router struct {
	handler http.Handler
}

// CaddyModule returns the Caddy module information.
func (Router) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "admin.api.mastio", New: func() caddy.Module { return new(Router) }}
}

// Provision builds the router.
func (r *Router) Provision(ctx caddy.Context) error {
	r.handler = admin.CaddyAdminHandler(mastio.Running, ctx.Logger(r)) // ctx.Logger(module) is the admin.api way (caddy#5032)
	return nil
}

// Routes returns the admin routes.
func (r *Router) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: admin.CaddyAdminPrefix,
		Handler: caddy.AdminHandlerFunc(func(w http.ResponseWriter, req *http.Request) error {
			r.handler.ServeHTTP(w, req)
			return nil
		}),
	}}
}

// Interface guards
var (
	_ caddy.AdminRouter = (*Router)(nil)
	_ caddy.Provisioner = (*Router)(nil)
)
