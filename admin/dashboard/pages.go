package dashboard

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// pageSize is how many rows a list shows at once.
const pageSize = 50

func (c *Console) overview(p *page) {
	ctx := p.r.Context()
	agents, err := c.api.ListAgents(ctx, "")
	if err != nil {
		p.fail(c, "Overview", err)
		return
	}
	active := 0
	for _, a := range agents.Agents {
		if a.Status == "active" {
			active++
		}
	}
	pending, err := c.api.ListEnrollments(ctx, "pending")
	if err != nil {
		p.fail(c, "Overview", err)
		return
	}
	seq, hash, err := c.m.Audit().Head(ctx)
	if err != nil {
		p.fail(c, "Overview", err)
		return
	}
	// The denials among the last thousand rows, newest first.
	var denials []store.AuditRow
	err = c.m.QueryAudit(ctx, store.AuditFilter{From: max(1, seq-1000)}, func(r store.AuditRow) error {
		if r.Result == "denied" {
			denials = append(denials, r)
		}
		return nil
	})
	if err != nil {
		p.fail(c, "Overview", err)
		return
	}
	slices.Reverse(denials)
	p.show(c, 200, "overview", map[string]any{"Title": "Overview", "Agents": len(agents.Agents), "Active": active,
		"Revoked": len(agents.Agents) - active, "Pending": pending.Enrollments[:min(5, len(pending.Enrollments))],
		"PendingCount": pending.Count, "Denials": denials[:min(10, len(denials))], "HeadSeq": seq, "HeadHash": hex.EncodeToString(hash),
		"Expiry": c.expiries(), "Break": c.m.ChainBreak()})
}

// expiry is a dated thing the operator must renew.
type expiry struct {
	What string
	At   time.Time
	Note string
}

func (c *Console) expiries() []expiry {
	ca := c.m.CA()
	out := []expiry{{"Org root CA", ca.Root().NotAfter, "rolling the root means every agent pins a new one"}}
	if in := ca.Intermediate(); in != nil {
		out = append(out, expiry{"Intermediate CA", in.NotAfter, "renewed automatically 30 days before"})
	}
	for _, k := range c.m.SigningKeys() {
		if k.Status == "active" && !k.ActivatedAt.IsZero() {
			out = append(out, expiry{"Signing key " + k.Kid[:12] + "… (active since)", k.ActivatedAt, "rotate on your schedule (Keys)"})
		}
	}
	return out
}

func (c *Console) agents(p *page) {
	q := p.r.URL.Query()
	status, search := q.Get("status"), strings.ToLower(strings.TrimSpace(q.Get("q")))
	list, err := c.api.ListAgents(p.r.Context(), status)
	if err != nil {
		p.fail(c, "Agents", err)
		return
	}
	var found []*registry.Agent
	for _, a := range list.Agents {
		hay := strings.ToLower(a.AgentID + " " + a.DisplayName + " " + strings.Join(a.Capabilities, " ") + " " + strings.Join(a.Groups, " "))
		if search == "" || strings.Contains(hay, search) {
			found = append(found, a)
		}
	}
	pageNo, _ := strconv.Atoi(q.Get("page"))
	pageNo = max(pageNo, 1)
	from := min((pageNo-1)*pageSize, len(found))
	to := min(from+pageSize, len(found))
	p.show(c, 200, "agents", map[string]any{"Title": "Agents", "Agents": found[from:to], "Total": len(found), "Status": status,
		"Q": q.Get("q"), "Page": pageNo, "Prev": pageNo - 1, "Next": nextPage(pageNo, to < len(found))})
}

func nextPage(n int, more bool) int {
	if more {
		return n + 1
	}
	return 0
}

func (c *Console) agent(p *page) {
	a, err := c.api.Agent(p.r.Context(), p.r.PathValue("id"))
	if err != nil {
		p.fail(c, "Agent", err)
		return
	}
	p.show(c, 200, "agent", map[string]any{"Title": a.AgentID, "Agent": a})
}

func (c *Console) enrollments(p *page) {
	status := p.r.URL.Query().Get("status")
	if status == "" {
		status = "pending"
	}
	if status == "all" {
		status = ""
	}
	list, err := c.api.ListEnrollments(p.r.Context(), status)
	if err != nil {
		p.fail(c, "Enrollments", err)
		return
	}
	p.show(c, 200, "enrollments", map[string]any{"Title": "Enrollments", "Enrollments": list.Enrollments, "Status": p.r.URL.Query().Get("status")})
}

// enrollment is the page `caddy mastio enroll` links to.
func (c *Console) enrollment(p *page) {
	e, err := c.m.Registry().Enrollment(p.r.Context(), p.r.PathValue("sid"))
	if err != nil {
		p.show(c, http.StatusNotFound, "message", map[string]any{"Title": "No such enrollment",
			"Message": "There is no enrollment session " + p.r.PathValue("sid") + ".", "Link": "/proxy/enrollments"})
		return
	}
	p.show(c, 200, "enrollment", map[string]any{"Title": "Enrollment " + e.SessionID, "E": e})
}

func (c *Console) policy(p *page) {
	c.showPolicy(p, 200, map[string]any{})
}

func (c *Console) showPolicy(p *page, status int, data map[string]any) {
	servers, err := c.api.ListServers(p.r.Context())
	if err != nil {
		p.fail(c, "Policy", err)
		return
	}
	pol := c.api.Policies()
	data["Title"], data["Servers"], data["Policy"] = "MCP servers and policy", servers.Servers, pol
	if _, ok := data["Stored"]; !ok {
		data["Stored"] = pol.Stored
	}
	p.show(c, status, "policy", data)
}

func (c *Console) audit(p *page) {
	q := p.r.URL.Query()
	after, _ := strconv.ParseInt(q.Get("after_seq"), 10, 64)
	f := store.AuditFilter{From: after + 1, Type: q.Get("event_type"), Actor: q.Get("actor"), Limit: pageSize + 1}
	var rows []store.AuditRow
	if err := c.m.QueryAudit(p.r.Context(), f, func(r store.AuditRow) error { rows = append(rows, r); return nil }); err != nil {
		p.fail(c, "Audit", err)
		return
	}
	next := int64(0)
	if len(rows) > pageSize {
		rows = rows[:pageSize]
		next = rows[pageSize-1].Seq
	}
	c.showAudit(p, 200, map[string]any{"Rows": rows, "Next": next, "EventType": f.Type, "Actor": f.Actor, "After": after})
}

func (c *Console) showAudit(p *page, status int, data map[string]any) {
	data["Title"] = "Audit log"
	seq, hash, err := c.m.Audit().Head(p.r.Context())
	if err != nil {
		p.fail(c, "Audit", err)
		return
	}
	data["HeadSeq"], data["HeadHash"], data["Break"] = seq, hex.EncodeToString(hash), c.m.ChainBreak()
	p.show(c, status, "audit", data)
}

func (c *Console) keys(p *page) {
	p.show(c, 200, "keys", map[string]any{"Title": "Signing keys", "Keys": c.m.SigningKeys()})
}

func (c *Console) pki(p *page) {
	ca := c.m.CA()
	sum := sha256.Sum256(ca.Root().Raw)
	p.show(c, 200, "pki", map[string]any{"Title": "PKI", "Root": ca.Root(), "RootSHA256": hex.EncodeToString(sum[:]),
		"Intermediates": ca.Intermediates()})
}
