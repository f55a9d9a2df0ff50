package caddymastio

import (
	"errors"

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

	mcpCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_calls_total",
		Help: "MCP calls (tools/call, resources/read, prompts/get) by server and policy decision.",
	}, []string{"server", "decision"})

	mcpRateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_rate_limited_total",
		Help: "MCP calls refused by a rate limit, by server and scope (agent or item).",
	}, []string{"server", "scope"})

	rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "rate_limited_total",
		Help: "Unauthenticated requests refused by a rate limit, by route (enrollment, enrollment_status, token, admin_auth) and scope (ip or global).",
	}, []string{"route", "scope"})

	refusalsUnaudited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "refusals_unaudited_total",
		Help: "Refusals naming an agent that were not audited one by one because the agent exceeded the audited-refusal rate; the count is carried by its next audited refusal.",
	}, []string{"event_type"})

	mcpMessagesDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_upstream_messages_dropped_total",
		Help: "Messages from an upstream MCP server the gateway did not deliver because it could not read them strictly, by server.",
	}, []string{"server"})
)

func registerMetrics(reg *prometheus.Registry) error {
	for _, c := range []prometheus.Collector{authCounter, mcpCalls, mcpRateLimited, rateLimited, refusalsUnaudited,
		mcpMessagesDropped} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
