package mastio

import (
	"github.com/prometheus/client_golang/prometheus"
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
	return []prometheus.Collector{authCounter, rateLimited, refusalsUnaudited,
		auditChainBreaks, auditChainBroken, auditVerifiedSeq, auditVerifiedRows}
}
