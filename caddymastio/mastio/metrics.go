package mastio

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// Metrics are package-level so that counts survive config reloads; each
// config's registry gets them registered (caddy_mastio_*), served at the
// admin endpoint's /metrics and by the metrics handler.
var (
	authCounter = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "auth_total",
		Help: "Authentication decisions on tokens, DPoP proofs and client certificates, by result and reason.",
	}, []string{"result", "reason"})

	rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "rate_limited_total",
		Help: "Unauthenticated requests refused by a rate limit, by route (enrollment, enrollment_status, token, admin_auth) and scope (ip or global).",
	}, []string{"route", "scope"})

	refusalsUnaudited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "refusals_unaudited_total",
		Help: "Refusals naming an agent that were not audited one by one because the agent exceeded the audited-refusal rate; the count is carried by its next audited refusal.",
	}, []string{"event_type"})

	mcpSessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_sessions_total",
		Help: "MCP sessions opened through the gateway (result created) and requests refused for their session (result denied: unknown, or another agent's), by server (aggregator for /v1/mcp).",
	}, []string{"server", "result"})

	auditEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_events_total",
		Help: "Audit rows committed, by event type and result: enrollments (enrollment.*), revocations (agent.revoked), token mints (token.issued), refusals (auth.refused, mcp.refused), ...",
	}, []string{"type", "result"})
	auditCommitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_commit_duration_seconds",
		Help:    "How long a commit of audit rows took (one transaction, fsynced with audit_sync full).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
	})
	auditCommitErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_commit_errors_total",
		Help: "Commits of audit rows that failed (the requests that needed them were refused).",
	})

	redisDegraded = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "redis_degraded_total",
		Help: "Replay checks this instance made alone because Redis could not be reached (redis_unavailable degrade).",
	})
	mcpCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_calls_total",
		Help: "MCP calls (tools/call, resources/read, prompts/get) by server and policy decision (rate-limited calls are in mcp_rate_limited_total).",
	}, []string{"server", "decision"})
	mcpUpstreamSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_upstream_duration_seconds",
		Help:    "How long forwarded MCP calls took, from the decision to the upstream's answer (or failure), by server.",
		Buckets: prometheus.DefBuckets,
	}, []string{"server"})
	mcpUpstreamErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_upstream_errors_total",
		Help: "Forwarded MCP calls that failed at the upstream, by server and outcome (upstream_error: unreachable or a bad answer; no_response; invalid_response: an answer that could not be read strictly, withheld; error: a JSON-RPC error answer).",
	}, []string{"server", "outcome"})

	auditChainBreaks = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_chain_breaks_total",
		Help: "Breaks the background verifier found in the audit chain (a row changed, removed or out of place, or a forged archive anchor).",
	})
	auditChainBroken = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_chain_broken",
		Help: "1 while the background verifier reports a break in the audit chain, else 0.",
	})
	auditVerifiedSeq = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_chain_verified_seq",
		Help: "The newest audit row the background verifier has verified.",
	})
	auditVerifiedRows = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "audit_rows_verified_total",
		Help: "Audit rows walked by the background verifier.",
	})
)

// Collectors are the Mastio's metrics, for a Prometheus registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{authCounter, rateLimited, refusalsUnaudited, mcpSessions,
		auditChainBreaks, auditChainBroken, auditVerifiedSeq, auditVerifiedRows,
		auditEvents, auditCommitSeconds, auditCommitErrors, mcpCalls, redisDegraded, mcpUpstreamSeconds, mcpUpstreamErrors, stateCollector{}}
}

// observeUpstream counts a forwarded MCP call's upstream outcome.
func observeUpstream(server, outcome string, took time.Duration) {
	switch outcome {
	case "denied", "rate_limited", "agent_revoked", "cancelled":
		return // not the upstream's doing
	case "upstream_error", "no_response", "invalid_response", "error":
		mcpUpstreamErrors.WithLabelValues(server, outcome).Inc()
	}
	mcpUpstreamSeconds.WithLabelValues(server).Observe(took.Seconds())
}

// observeCommit counts a commit of the audit log (audit.Options.Observe).
func observeCommit(c audit.Commit) {
	if c.Err != nil {
		auditCommitErrors.Inc()
		return
	}
	auditCommitSeconds.Observe(c.Duration.Seconds())
	for _, r := range c.Records {
		auditEvents.WithLabelValues(r.Type, r.Result).Inc()
	}
}

// reported is the configuration started last, whose state stateCollector
// reports (nil once its location is closed).
var reported atomic.Pointer[Mastio]

// stateCollector reports, at scrape time, what is a fact of the state
// rather than a count: the readiness checks, the signing key's age, the
// Org root's and intermediate's expiry.
type stateCollector struct{}

var (
	readyDesc = prometheus.NewDesc("caddy_mastio_ready",
		"1 when the readiness check passes (as /readyz), else 0, by check.", []string{"check"}, nil)
	keyAgeDesc = prometheus.NewDesc("caddy_mastio_signing_key_age_seconds",
		"Seconds since the active access-token signing key started signing.", nil, nil)
	expiryDesc = prometheus.NewDesc("caddy_mastio_certificate_expiry_timestamp_seconds",
		"When a certificate of the Mastio expires (Unix time), by certificate (org_root, intermediate).", []string{"certificate"}, nil)
)

func (stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- readyDesc
	ch <- keyAgeDesc
	ch <- expiryDesc
}

func (stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := reported.Load()
	if m == nil || m.Open() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := m.Readiness(ctx)
	for check, v := range r.Checks {
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, boolValue(v == "ok"), check)
	}
	if k := m.keys.Active(); k != nil && !k.ActivatedAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(keyAgeDesc, prometheus.GaugeValue, time.Since(k.ActivatedAt).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(m.ca.Root().NotAfter.Unix()), "org_root")
	if in := m.ca.Intermediate(); in != nil {
		ch <- prometheus.MustNewConstMetric(expiryDesc, prometheus.GaugeValue, float64(in.NotAfter.Unix()), "intermediate")
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Running is the configuration started last in this process, nil when
// none is running (its location closed): what Caddy's admin endpoint
// serves, since it outlives configurations.
func Running() *Mastio { return reported.Load() }
