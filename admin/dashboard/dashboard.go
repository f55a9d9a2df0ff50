// Package dashboard is the operator's console under /proxy/: pages
// rendered on the server with html/template and one embedded style sheet
// (no script, no CDN, no build step), over the admin operations of
// package admin, behind a sign-in with the admin secret.
//
// Sessions are kept on the server (the cookie holds a random id; logout
// ends it there), the cookie is HttpOnly, Secure and SameSite=Strict,
// every form carries the session's CSRF token and a POST from another
// origin is refused. Failed sign-ins are limited and audited as the admin
// API's are (admin.auth_failed); sign-ins, sign-outs and every action are
// audited with actor "dashboard".
package dashboard

import (
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/endpoints"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

//go:embed templates/*.html static/*
var files embed.FS

func init() {
	endpoints.RegisterSurface("dashboard", func(m *mastio.Mastio, log *zap.Logger) endpoints.Routes {
		return New(m, log).Routes()
	})
}

// Actor is the audit actor of what is done from the dashboard.
const Actor = "dashboard"

// CookieName is the session cookie.
const CookieName = "mastio_console"

// Console is the dashboard of one configuration's Mastio.
type Console struct {
	m     *mastio.Mastio
	api   *admin.API
	log   *zap.Logger
	pages map[string]*template.Template
}

// New returns the dashboard over m.
func New(m *mastio.Mastio, log *zap.Logger) *Console {
	return &Console{m: m, api: admin.New(m, log), log: log, pages: parsePages()}
}

// page is what a handler of a signed-in operator gets.
type page struct {
	w      http.ResponseWriter
	r      *http.Request
	sess   *mastio.ConsoleSession
	caller admin.Caller
}

// Routes are the dashboard's routes.
func (c *Console) Routes() endpoints.Routes {
	static, _ := fs.Sub(files, "static")
	routes := endpoints.Routes{
		"GET /proxy/static/":                    http.StripPrefix("/proxy/static/", c.staticFiles(http.FileServerFS(static))),
		"GET /proxy/login":                      c.headers(http.HandlerFunc(c.loginPage)),
		"POST /proxy/login":                     c.headers(http.HandlerFunc(c.login)),
		"POST /proxy/logout":                    c.signedIn(c.logout),
		"GET /proxy/{$}":                        c.signedIn(c.overview),
		"GET /proxy/agents":                     c.signedIn(c.agents),
		"GET /proxy/agents/{id}":                c.signedIn(c.agent),
		"POST /proxy/agents/{id}/revoke":        c.signedIn(c.revoke),
		"POST /proxy/agents/{id}/rotate-cert":   c.signedIn(c.rotate),
		"GET /proxy/enrollments":                c.signedIn(c.enrollments),
		"GET /proxy/enrollments/{sid}":          c.signedIn(c.enrollment),
		"POST /proxy/enrollments/{sid}/approve": c.signedIn(c.approve),
		"POST /proxy/enrollments/{sid}/reject":  c.signedIn(c.reject),
		"GET /proxy/policy":                     c.signedIn(c.policy),
		"POST /proxy/policy":                    c.signedIn(c.putPolicy),
		"POST /proxy/policy/check":              c.signedIn(c.checkPolicy),
		"POST /proxy/servers":                   c.signedIn(c.putServer),
		"POST /proxy/servers/{name}/remove":     c.signedIn(c.removeServer),
		"GET /proxy/audit":                      c.signedIn(c.audit),
		"POST /proxy/audit/verify":              c.signedIn(c.verify),
		"GET /proxy/audit/export":               c.signedIn(c.export),
		"POST /proxy/audit/bundle":              c.signedIn(c.bundle),
		"GET /proxy/keys":                       c.signedIn(c.keys),
		"POST /proxy/keys/rotate":               c.signedIn(c.rotateKey),
		"GET /proxy/pki":                        c.signedIn(c.pki),
	}
	return routes
}

// headers sets what every dashboard answer carries: no framing, no
// inline script or style, nothing cached, no referrer to other sites.
func (c *Console) headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("X-Content-Type-Options", "nosniff")
		// Not no-referrer: with it, browsers send "Origin: null" on a POST,
		// and the origin check below could not tell our forms from others.
		hd.Set("Referrer-Policy", "same-origin")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

func (c *Console) staticFiles(h http.Handler) http.Handler {
	return c.headers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600") // the style sheet alone may be cached
		h.ServeHTTP(w, r)
	}))
}

// signedIn serves fn to a signed-in operator; others go to the sign-in
// page (and come back after). A POST must carry the session's CSRF token
// and come from this origin.
func (c *Console) signedIn(fn func(p *page)) http.Handler {
	return c.headers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sess *mastio.ConsoleSession
		if ck, err := r.Cookie(CookieName); err == nil {
			sess = c.m.ConsoleSession(ck.Value)
		}
		if sess == nil {
			if r.Method != http.MethodGet {
				c.render(w, http.StatusUnauthorized, "message", nil, map[string]any{"Title": "Signed out",
					"Message": "Your session has ended. Sign in again, then repeat what you were doing.", "Link": "/proxy/login"})
				return
			}
			http.Redirect(w, r, "/proxy/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, admin.MaxBodyBytes)
			reason := ""
			switch {
			case !sameOrigin(r):
				reason = "origin"
			case !sess.CheckCSRF(r.PostFormValue("csrf")):
				reason = "csrf_token"
			}
			if reason != "" {
				c.log.Info("dashboard form refused", zap.String("reason", reason), zap.String("origin", r.Header.Get("Origin")),
					zap.String("path", r.URL.Path), zap.String("remote_ip", c.m.ClientIP(r)))
				c.render(w, http.StatusForbidden, "message", sess, map[string]any{"Title": "Form refused",
					"Message": "This form did not come from this dashboard's session (its CSRF token is missing or stale). Nothing was changed. Reload the page and try again.",
					"Link":    "/proxy/"})
				return
			}
		}
		ip := c.m.ClientIP(r)
		caller := admin.Caller{Actor: Actor, RemoteIP: ip}
		r = r.WithContext(mastio.WithActor(r.Context(), Actor))
		fn(&page{w: w, r: r, sess: sess, caller: caller})
	}))
}

// sameOrigin: a browser's POST names its origin, which must be this
// host; without an Origin header the CSRF token alone decides.
func sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}
