package caddymastio

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// Caddy logs every request header in its access log, and in its error log
// when a handler fails, redacting only Authorization, Proxy-Authorization
// and Cookie; it captures them before any handler runs, so removing a
// header later does not keep it out. These headers carry the Mastio's own
// credentials: the admin secret, DPoP proofs and enrollment proofs.
var sensitiveHeaders = []string{"X-Admin-Secret", "DPoP", "X-Enrollment-Proof"}

// redactedVar marks a request whose log entries a mastio module already
// took over (the first of mastio, mastio_auth, mastio_mcp to see it).
const redactedVar = "mastio.log_redacted"

func carriesSecrets(r *http.Request) bool {
	for _, h := range sensitiveHeaders {
		if len(r.Header.Values(h)) > 0 {
			return true
		}
	}
	return false
}

// httpLogModule stands for the http app when asking Caddy for a logger:
// Caddy routes log entries to the configured logs by logger name, and the
// access log's entries come from the http app's "log.access" loggers.
type httpLogModule struct{}

func (httpLogModule) CaddyModule() caddy.ModuleInfo { return caddy.ModuleInfo{ID: "http"} }

// serveRedacted serves a request that carries Mastio credentials so that
// they reach no log, whatever log configuration the operator writes:
//
//   - Caddy's access log entry is replaced by an equal one (same logger
//     names, message and fields) whose request headers show "REDACTED" for
//     those credentials;
//   - a handler error is answered here (its status, a JSON body) and logged
//     redacted, instead of going to Caddy's error handling, whose log
//     entry would hold the credentials. handle_errors routes therefore do
//     not see errors of such requests.
//
// Requests without such headers are served as they are.
func (a *App) serveRedacted(w http.ResponseWriter, r *http.Request, serve func(http.ResponseWriter, *http.Request) error) error {
	if !carriesSecrets(r) || caddyhttp.GetVar(r.Context(), redactedVar) != nil {
		return serve(w, r)
	}
	caddyhttp.SetVar(r.Context(), redactedVar, true)
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.Logs == nil || !accessLogged(srv.Logs, r.Host) {
		// No access log for this request: only an error is logged, and
		// the copy of the request it shows is made then (most requests
		// pay for no copy).
		if err := serve(rec, r); err != nil {
			a.answerError(rec, r, redactedClone(r), err)
		}
		return nil
	}
	start := time.Now()
	logged := redactedClone(r)
	var body *countingReader
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingReader{ReadCloser: r.Body}
		r.Body = body
	}
	err := serve(rec, r)
	if err != nil {
		a.answerError(rec, r, logged, err)
	}
	if skip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.LogSkipVar).(bool); !skip {
		caddyhttp.SetVar(r.Context(), caddyhttp.LogSkipVar, true) // Caddy's own entry holds the credentials
		var read int
		if body != nil {
			read = body.n
		}
		a.logAccess(srv, r, logged, rec, time.Since(start), read)
	}
	return nil
}

// redactedClone is the request as Caddy would log it, credentials
// replaced.
func redactedClone(r *http.Request) *http.Request {
	c := r.Clone(r.Context())
	for _, h := range sensitiveHeaders {
		if vals := c.Header.Values(h); len(vals) > 0 {
			c.Header[http.CanonicalHeaderKey(h)] = []string{"REDACTED"}
		}
	}
	return c
}

type countingReader struct {
	io.ReadCloser
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += n
	return n, err
}

// answerError answers a handler error as Caddy would without error
// routes (the error's status), with a JSON body, and logs it with the
// request redacted.
func (a *App) answerError(w caddyhttp.ResponseRecorder, r, logged *http.Request, err error) {
	status := http.StatusInternalServerError
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode > 0 {
		status = he.StatusCode
	}
	level := zapcore.DebugLevel
	if status >= 500 {
		level = zapcore.ErrorLevel
	}
	if c := a.logger.Check(level, "handler error on a request carrying credentials (answered here, not by handle_errors)"); c != nil {
		c.Write(zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: logged}), zap.Int("status", status), zap.Error(err))
	}
	if w.Status() == 0 {
		code := strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_"))
		httpjson.Error(w, status, code, http.StatusText(status))
	}
}

// logAccess writes the access log entry Caddy would have written, through
// the same loggers of srv, whose logs the caller found to cover r.
func (a *App) logAccess(srv *caddyhttp.Server, r, logged *http.Request, rec caddyhttp.ResponseRecorder, d time.Duration, read int) {
	status := rec.Status()
	level := zapcore.InfoLevel
	if status >= 500 {
		level = zapcore.ErrorLevel
	}
	if lvl, ok := caddyhttp.GetVar(r.Context(), caddyhttp.LogLevelVar).(string); ok {
		if l, err := zapcore.ParseLevel(lvl); err == nil && l >= zapcore.DebugLevel && l <= zapcore.ErrorLevel {
			level = l
		}
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	userID := ""
	if repl != nil {
		userID, _ = repl.GetString("http.auth.user.id")
	}
	fields := []zap.Field{
		zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: logged, ShouldLogCredentials: srv.Logs.ShouldLogCredentials}),
		zap.Int("bytes_read", read), zap.String("user_id", userID), zap.Duration("duration", d),
		zap.Int("size", rec.Size()), zap.Int("status", status),
		zap.Object("resp_headers", caddyhttp.LoggableHTTPHeader{Header: rec.Header(), ShouldLogCredentials: srv.Logs.ShouldLogCredentials}),
	}
	if p := mastio.PrincipalFrom(r); p != nil {
		fields = append(fields, zap.String("agent_id", p.AgentID))
	}
	for _, l := range accessLoggers(a.accessLog, srv.Logs, r) {
		if c := l.Check(level, "handled request"); c != nil {
			c.Write(fields...)
		}
	}
}

// accessLogged is Caddy's rule for whether a host's requests are logged.
func accessLogged(slc *caddyhttp.ServerLogConfig, hostport string) bool {
	host := hostOnly(hostport)
	for name := range slc.LoggerNames {
		if certmagic.MatchWildcard(host, name) {
			return true
		}
	}
	for _, h := range slc.SkipHosts {
		if certmagic.MatchWildcard(host, h) {
			return false
		}
	}
	return !slc.SkipUnmappedHosts
}

// accessLoggers are the loggers Caddy would write r's entry to: those
// named by the access_logger_names variable (log_name), else those mapped
// to the host, else the server's default.
func accessLoggers(base *zap.Logger, slc *caddyhttp.ServerLogConfig, r *http.Request) []*zap.Logger {
	var names []string
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.AccessLoggerNameVarKey).([]any); ok {
		for _, n := range v {
			s, _ := n.(string)
			names = append(names, s)
		}
	} else {
		names = loggerNamesFor(slc, hostOnly(r.Host))
	}
	out := make([]*zap.Logger, 0, len(names))
	for _, n := range names {
		if n == "" {
			out = append(out, base)
		} else {
			out = append(out, base.Named(n))
		}
	}
	return out
}

func loggerNamesFor(slc *caddyhttp.ServerLogConfig, host string) []string {
	host = strings.ToLower(host)
	if names, ok := slc.LoggerNames[host]; ok {
		return names
	}
	labels := strings.Split(host, ".")
	for i := range labels {
		if labels[i] == "" {
			continue
		}
		labels[i] = "*"
		if names, ok := slc.LoggerNames[strings.Join(labels, ".")]; ok {
			return names
		}
	}
	return []string{slc.DefaultLoggerName}
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}
