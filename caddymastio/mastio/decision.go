package mastio

import (
	"context"
	"net/http"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Decision kinds: the "kind" field of a decision log line.
const (
	KindAuth       = "auth"       // a request's credentials (token, DPoP proof, client certificate)
	KindHandshake  = "tls"        // a client certificate at the TLS handshake
	KindToken      = "token"      // a token request
	KindAdminAuth  = "admin_auth" // an admin secret
	KindSession    = "session"    // an MCP session
	KindPolicy     = "policy"     // an MCP call against the policy
	KindRateLimit  = "rate_limit" // a request or call against a rate limit
	KindEnrollment = "enrollment" // an administrator's decision on an enrollment
)

// Decision is one security decision, logged as one line of the
// "mastio.decision" logger with the same fields every time: decision
// (allow or deny), kind, reason, agent_id, jkt, rule, request_id (Caddy's
// {http.request.uuid}, which then also appears as "uuid" in the access
// log) and remote_ip, then the fields of the kind (server, name, ...).
// Denials and enrollment decisions are logged at INFO, other allows at
// DEBUG (switch them on with a Caddy log that includes mastio.decision at
// level DEBUG). Anonymous
// denials (no agent named) are sampled, so that a flood cannot flood the
// log.
type Decision struct {
	Kind    string
	Allow   bool
	Reason  string
	AgentID string
	JKT     string
	Rule    string
	// RemoteIP is the client's address; by default the request's.
	RemoteIP string
	// Fields are the kind's own fields.
	Fields []zap.Field
}

// LogDecision logs d, made on request r (nil: none, e.g. at the TLS
// handshake), with msg as the line's message.
func (m *Mastio) LogDecision(r *http.Request, msg string, d Decision) {
	m.logDecision(r, nil, msg, d)
}

// LogDecisionContext is LogDecision for a decision made where only the
// request's context is at hand (the MCP aggregator's handlers).
func (m *Mastio) LogDecisionContext(ctx context.Context, msg string, d Decision) {
	m.logDecision(nil, ctx, msg, d)
}

func (m *Mastio) logDecision(r *http.Request, ctx context.Context, msg string, d Decision) {
	log, level := m.decisionLog, zapcore.InfoLevel
	switch {
	case d.Allow && d.Kind != KindEnrollment: // an administrator's approval is rare and always logged
		level = zapcore.DebugLevel
	case d.AgentID == "":
		log = m.decisionSampled
	}
	ce := log.Check(level, msg)
	if ce == nil {
		return
	}
	decision, requestID, remoteIP := "deny", "", d.RemoteIP
	if d.Allow {
		decision = "allow"
	}
	if r != nil {
		ctx = r.Context()
		if remoteIP == "" {
			remoteIP = m.ClientIP(r)
		}
	}
	if ctx != nil && m.cfg.RequestID != nil {
		requestID = m.cfg.RequestID(ctx)
	}
	ce.Write(append([]zap.Field{zap.String("decision", decision), zap.String("kind", d.Kind), zap.String("reason", d.Reason),
		zap.String("agent_id", d.AgentID), zap.String("jkt", d.JKT), zap.String("rule", d.Rule),
		zap.String("request_id", requestID), zap.String("remote_ip", remoteIP)}, d.Fields...)...)
}
