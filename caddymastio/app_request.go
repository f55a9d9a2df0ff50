package caddymastio

import (
	"context"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// How the core reads a request as Caddy saw it (mastio.Settings hooks).

// clientIP is the caller's address as Caddy determined it (behind trusted
// proxies), or the TCP peer.
func clientIP(r *http.Request) string {
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && v != "" {
		return v
	}
	return mastio.PeerIP(r)
}

// requestID is the request's {http.request.uuid}: reading it also puts it
// in the request's access log line (as "uuid"), so a decision log line
// and the access log line of its request can be matched.
func requestID(ctx context.Context) string {
	repl, ok := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	id, _ := repl.GetString("http.request.uuid")
	return id
}

// originalPath is the request path as the client sent it, before any
// rewrite or handle_path stripping: what a DPoP htu covers.
func originalPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.EscapedPath()
	}
	return r.URL.EscapedPath()
}
