package mastio

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Rate limits one kind of unauthenticated request, per client address and
// across all addresses, in requests per minute (the burst is the same
// number). 0 takes the default; -1 turns the limit off.
type Rate struct {
	// Requests per minute from one client address.
	PerIP int `json:"per_ip,omitempty"`

	// Requests per minute from all addresses together.
	Global int `json:"global,omitempty"`
}

// AnonymousRoutes are the limited routes and their default rates:
//
//   - enrollment: POST /v1/enrollment/start (creates a pending session)
//   - enrollment_status: GET /v1/enrollment/{sid}/status
//   - token: POST /v1/auth/token without a client certificate (the
//     assertion and proof are verified after the limit)
var AnonymousRoutes = map[string]Rate{
	"enrollment":        {PerIP: 5, Global: 120},
	"enrollment_status": {PerIP: 60, Global: 3000},
	"token":             {PerIP: 300, Global: 6000},
}

// ValidateRates checks configured anonymous rates.
func ValidateRates(rates map[string]Rate) error {
	for route, r := range rates {
		if _, ok := AnonymousRoutes[route]; !ok {
			names := make([]string, 0, len(AnonymousRoutes))
			for n := range AnonymousRoutes {
				names = append(names, n)
			}
			sort.Strings(names)
			return fmt.Errorf("anonymous_rates: unknown route %q (known: %s)", route, strings.Join(names, ", "))
		}
		if r.PerIP < -1 || r.Global < -1 {
			return fmt.Errorf("anonymous_rates: %s: want requests per minute, or -1 for no limit", route)
		}
	}
	return nil
}

// anonymousRate is route's configured rate with defaults filled in.
func (m *Mastio) anonymousRate(route string) Rate {
	r := AnonymousRoutes[route]
	if c, ok := m.cfg.AnonymousRates[route]; ok {
		if c.PerIP != 0 {
			r.PerIP = c.PerIP
		}
		if c.Global != 0 {
			r.Global = c.Global
		}
	}
	return r
}

// AllowAnonymous applies route's per-address and global limits to a
// caller at ip. A refusal is counted and names its scope (ip or global)
// and how long to wait.
func (m *Mastio) AllowAnonymous(route, ip string) (ok bool, scope string, wait time.Duration) {
	rate := m.anonymousRate(route)
	if rate.PerIP > 0 {
		if ok, d := m.Limiter("anon:"+route+":ip", rate.PerIP, time.Minute, rate.PerIP).Allow(ip); !ok {
			scope, wait = "ip", d
		}
	}
	if scope == "" && rate.Global > 0 {
		if ok, d := m.Limiter("anon:"+route+":global", rate.Global, time.Minute, rate.Global).Allow(""); !ok {
			scope, wait = "global", d
		}
	}
	if scope == "" {
		return true, "", 0
	}
	rateLimited.WithLabelValues(route, scope).Inc()
	return false, scope, wait
}

// Default limits of MCP calls, in calls per minute: per agent on one
// server, and per agent and item (tool, prompt, resource).
const (
	DefaultAgentRate = 600
	DefaultItemRate  = 120
)

// CallLimit is the limit a configured rate stands for: def when it is not
// set (0), none (0) when it is -1.
func CallLimit(configured, def int) int {
	switch {
	case configured == 0:
		return def
	case configured < 0:
		return 0
	}
	return configured
}
