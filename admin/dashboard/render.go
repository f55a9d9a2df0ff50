package dashboard

import (
	"bytes"
	"context"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

var funcs = template.FuncMap{
	"utc": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04:05 UTC")
		case *time.Time:
			if v == nil || v.IsZero() {
				return "—"
			}
			return v.UTC().Format("2006-01-02 15:04:05 UTC")
		}
		return fmt.Sprint(t)
	},
	"ago": func(t any) string {
		var v time.Time
		switch x := t.(type) {
		case time.Time:
			v = x
		case *time.Time:
			if x == nil {
				return ""
			}
			v = *x
		}
		if v.IsZero() {
			return ""
		}
		return relative(time.Until(v))
	},
	"short": func(s string, n int) string {
		if len(s) <= n {
			return s
		}
		return s[:n] + "…"
	},
	"join": strings.Join,
	"path": url.PathEscape,
}

// relative says how far d is from now, roughly: "in 3 days", "5 min ago".
func relative(d time.Duration) string {
	future := d > 0
	if d < 0 {
		d = -d
	}
	var s string
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d.Hours()))
	case d < 60*24*time.Hour:
		s = fmt.Sprintf("%d days", int(d.Hours()/24))
	default:
		s = fmt.Sprintf("%.1f years", d.Hours()/24/365)
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// parsePages parses each page with the layout.
func parsePages() map[string]*template.Template {
	names, err := files.ReadDir("templates")
	if err != nil {
		panic(err)
	}
	pages := map[string]*template.Template{}
	for _, e := range names {
		name := strings.TrimSuffix(e.Name(), ".html")
		if name == "layout" {
			continue
		}
		pages[name] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/"+e.Name()))
	}
	return pages
}

// render writes page name with data (a map; the session's CSRF token and
// nav are added).
func (c *Console) render(w http.ResponseWriter, status int, name string, sess *mastio.ConsoleSession, data map[string]any) {
	if data == nil {
		data = map[string]any{}
	}
	data["Page"] = name
	if sess != nil {
		data["CSRF"] = sess.CSRF
		data["SignedIn"] = true
	}
	var b bytes.Buffer
	if err := c.pages[name].Execute(&b, data); err != nil {
		c.log.Error("dashboard page failed", zap.String("page", name), zap.Error(err))
		httpjson.Error(w, 500, "internal_error", "the page could not be rendered")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

// show renders a page for a signed-in operator.
func (p *page) show(c *Console, status int, name string, data map[string]any) {
	c.render(p.w, status, name, p.sess, data)
}

// fail shows an error of an operation: the API's refusal as it is (status,
// code, message), anything else 500 with the cause in the log only.
func (p *page) fail(c *Console, title string, err error) {
	status, msg := http.StatusInternalServerError, "the operation could not be completed; nothing was changed unless the audit log says so"
	if pr := problem(err); pr != nil {
		status, msg = pr.Status, pr.Message
	} else if mastio.Unavailable(err) {
		status, msg = http.StatusServiceUnavailable, "The database is unavailable, so nothing was changed. Retry in a moment."
		c.log.Error("dashboard action failed", zap.String("path", p.r.URL.Path), zap.Error(err))
	} else if reason, ok := mastio.KeyStoreUnavailable(err); ok {
		status, msg = http.StatusServiceUnavailable, "The Org CA's key store is unavailable ("+reason+"), so nothing was issued. Retry once it is back."
		c.log.Error("dashboard action failed", zap.String("path", p.r.URL.Path), zap.Error(err))
	} else {
		c.log.Error("dashboard action failed", zap.String("path", p.r.URL.Path), zap.Error(err))
	}
	p.show(c, status, "message", map[string]any{"Title": title, "Message": msg, "Link": p.r.Referer()})
}

// audited appends a row for a dashboard event (sign-in, sign-out).
func (c *Console) audited(ctx context.Context, typ, subject, ip string) error {
	_, err := c.m.Audit().Append(ctx, audit.Event{Type: typ, Actor: Actor, Subject: subject,
		Details: map[string]any{"remote_ip": ip}})
	return err
}
