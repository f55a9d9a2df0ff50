package gateway

import "github.com/prometheus/client_golang/prometheus"

// Metrics are package-level so that counts survive config reloads.
var (
	mcpRateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_rate_limited_total",
		Help: "MCP calls refused by a rate limit, by server and scope (agent or item).",
	}, []string{"server", "scope"})

	mcpMessagesDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "mastio", Name: "mcp_upstream_messages_dropped_total",
		Help: "Messages from an upstream MCP server the gateway did not deliver because it could not read them strictly, by server.",
	}, []string{"server"})
)

// Collectors are the gateway's metrics, for a Prometheus registry.
func Collectors() []prometheus.Collector {
	return []prometheus.Collector{mcpRateLimited, mcpMessagesDropped}
}
