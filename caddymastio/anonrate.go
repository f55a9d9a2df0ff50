package caddymastio

import (
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// AnonymousRate limits one kind of unauthenticated request, per client
// address and across all addresses, in requests per minute (the burst is
// the same number). 0 takes the default; -1 turns the limit off.
type AnonymousRate struct {
	// Requests per minute from one client address.
	PerIP int `json:"per_ip,omitempty"`

	// Requests per minute from all addresses together.
	Global int `json:"global,omitempty"`
}

// anonymousRoutes are the limited routes and their default rates:
//
//   - enrollment: POST /v1/enrollment/start (creates a pending session)
//   - enrollment_status: GET /v1/enrollment/{sid}/status
//   - token: POST /v1/auth/token without a client certificate (the
//     assertion and proof are verified after the limit)
var anonymousRoutes = map[string]AnonymousRate{
	"enrollment":        {PerIP: 5, Global: 120},
	"enrollment_status": {PerIP: 60, Global: 3000},
	"token":             {PerIP: 300, Global: 6000},
}

func anonymousRouteNames() string {
	names := make([]string, 0, len(anonymousRoutes))
	for n := range anonymousRoutes {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func validateAnonymousRates(rates map[string]*AnonymousRate) error {
	for route, r := range rates {
		if _, ok := anonymousRoutes[route]; !ok {
			return fmt.Errorf("anonymous_rates: unknown route %q (known: %s)", route, anonymousRouteNames())
		}
		if r == nil || r.PerIP < -1 || r.Global < -1 {
			return fmt.Errorf("anonymous_rates: %s: want requests per minute, or -1 for no limit", route)
		}
	}
	return nil
}

// anonymousRate is the configured rate of route with defaults filled in.
func (a *App) anonymousRate(route string) AnonymousRate {
	r := anonymousRoutes[route]
	if c := a.AnonymousRates[route]; c != nil {
		if c.PerIP != 0 {
			r.PerIP = c.PerIP
		}
		if c.Global != 0 {
			r.Global = c.Global
		}
	}
	return r
}

// anonymousLimited applies route's per-address and global limits to r. If
// either is exhausted it answers 429 with Retry-After, counts and logs it,
// and returns true. what names the requests in the message.
func (h *Handler) anonymousLimited(w http.ResponseWriter, r *http.Request, route, what string) bool {
	rate := h.app.anonymousRate(route)
	ip := clientIP(r)
	scope, wait := "", time.Duration(0)
	if rate.PerIP > 0 {
		if ok, d := h.app.state.limiter("anon:"+route+":ip", rate.PerIP, time.Minute, rate.PerIP).Allow(ip); !ok {
			scope, wait = "ip", d
		}
	}
	if scope == "" && rate.Global > 0 {
		if ok, d := h.app.state.limiter("anon:"+route+":global", rate.Global, time.Minute, rate.Global).Allow(""); !ok {
			scope, wait = "global", d
		}
	}
	if scope == "" {
		return false
	}
	rateLimited.WithLabelValues(route, scope).Inc()
	h.logger.Warn("rate limited", zap.String("route", route), zap.String("scope", scope), zap.String("remote_ip", ip))
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	msg := "too many " + what + " requests from this address; retry later"
	if scope == "global" {
		msg = "too many " + what + " requests from all addresses together; retry later"
	}
	httpjson.Error(w, http.StatusTooManyRequests, "rate_limited", msg)
	return true
}
