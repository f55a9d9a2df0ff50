package dashboard

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

func problem(err error) *httpjson.Problem {
	var re *registry.Error
	var p *httpjson.Problem
	switch {
	case errors.As(err, &re):
		return &httpjson.Problem{Status: re.Status, Code: re.Code, Message: re.Message}
	case errors.As(err, &p):
		return p
	}
	return nil
}

// next is where to go after signing in: a dashboard path, never another
// site.
func next(raw string) string {
	if !strings.HasPrefix(raw, "/proxy/") || strings.HasPrefix(raw, "//") || strings.ContainsAny(raw, "\\\r\n") {
		return "/proxy/"
	}
	return raw
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "login", nil, map[string]any{"Title": "Sign in", "Next": next(r.URL.Query().Get("next"))})
}

// login checks the admin secret (form field password, as the original
// dashboard's): failures are limited per address and audited like the
// admin API's; a success opens a server-side session.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if !sameOrigin(r) { // no session to carry a token yet: the origin decides
		c.render(w, http.StatusForbidden, "login", nil, map[string]any{"Title": "Sign in", "Next": "/proxy/",
			"Error": "This sign-in form did not come from this dashboard."})
		return
	}
	password := r.PostFormValue("password")
	to := next(r.PostFormValue("next"))
	ip := c.m.ClientIP(r)
	check := c.m.CheckAdminSecret(r.Context(), ip, r.Method, r.URL.Path, password)
	if !check.OK {
		if check.RetryAfter > 0 {
			httpjson.SetRetryAfter(w, check.RetryAfter)
		}
		msg := "That is not the admin secret."
		switch check.Status {
		case http.StatusUnauthorized:
			msg = "Enter the admin secret."
		case http.StatusTooManyRequests:
			msg = "Too many failed attempts from this address: sign-in is locked for a while. " + check.Message
		case http.StatusServiceUnavailable:
			msg = check.Message
		}
		c.render(w, check.Status, "login", nil, map[string]any{"Title": "Sign in", "Next": to, "Error": msg})
		return
	}
	id, _ := c.m.StartConsoleSession(ip)
	if err := c.audited(r.Context(), "dashboard.login", "dashboard", ip); err != nil {
		c.m.EndConsoleSession(id)
		c.render(w, http.StatusServiceUnavailable, "login", nil, map[string]any{"Title": "Sign in", "Next": to,
			"Error": "The audit log cannot be written, so no session was opened."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: "/proxy/", HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// logout ends the session on the server: the cookie stops working even if
// it was copied.
func (c *Console) logout(p *page) {
	if ck, err := p.r.Cookie(CookieName); err == nil {
		c.m.EndConsoleSession(ck.Value)
	}
	if err := c.audited(p.r.Context(), "dashboard.logout", "dashboard", p.caller.RemoteIP); err != nil {
		c.log.Error("auditing a dashboard sign-out") // the session is ended regardless
	}
	http.SetCookie(p.w, &http.Cookie{Name: CookieName, Value: "", Path: "/proxy/", MaxAge: -1, HttpOnly: true, Secure: true,
		SameSite: http.SameSiteStrictMode})
	http.Redirect(p.w, p.r, "/proxy/login", http.StatusSeeOther)
}
