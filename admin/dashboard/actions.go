package dashboard

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/policy"
)

// confirmed: a destructive form must carry its typed or ticked
// confirmation; without it, nothing is done and the form says why.
func (p *page) confirmed(c *Console, field, want, what string) bool {
	if strings.TrimSpace(p.r.PostFormValue(field)) == want {
		return true
	}
	p.show(c, http.StatusBadRequest, "message", map[string]any{"Title": "Not confirmed",
		"Message": "Nothing was done: confirm " + what + " first.", "Link": p.r.Referer()})
	return false
}

func list(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
		out = append(out, f)
	}
	return out
}

func (c *Console) revoke(p *page) {
	id := p.r.PathValue("id")
	if !p.confirmed(c, "confirm", "yes", "the revocation") {
		return
	}
	if _, err := c.api.Revoke(p.r.Context(), p.caller, id, admin.RevokeRequest{Reason: p.r.PostFormValue("reason")}); err != nil {
		p.fail(c, "Revoke", err)
		return
	}
	http.Redirect(p.w, p.r, "/proxy/agents/"+url.PathEscape(id)+"?done=revoked", http.StatusSeeOther)
}

// rotate issues a new certificate for a key the Mastio mints: the page
// that follows shows the private key once (it is not kept anywhere).
func (c *Console) rotate(p *page) {
	id := p.r.PathValue("id")
	if !p.confirmed(c, "confirm", "yes", "the rotation") {
		return
	}
	grace, err := strconv.ParseInt(p.r.PostFormValue("grace_seconds"), 10, 64)
	if err != nil {
		grace = 0
	}
	iss, err := c.api.RotateCert(p.r.Context(), p.caller, id, admin.RotateCertRequest{GraceSeconds: grace})
	if err != nil {
		p.fail(c, "Rotate certificate", err)
		return
	}
	p.show(c, 200, "minted", map[string]any{"Title": "New certificate for " + iss.AgentID, "Issued": iss})
}

func (c *Console) approve(p *page) {
	sid := p.r.PathValue("sid")
	req := admin.ApproveRequest{AgentID: strings.TrimSpace(p.r.PostFormValue("agent_id")),
		Capabilities: list(p.r.PostFormValue("capabilities")), Groups: list(p.r.PostFormValue("groups"))}
	if _, err := c.api.Approve(p.r.Context(), p.caller, sid, req); err != nil {
		p.fail(c, "Approve", err)
		return
	}
	http.Redirect(p.w, p.r, "/proxy/enrollments/"+url.PathEscape(sid)+"?done=approved", http.StatusSeeOther)
}

func (c *Console) reject(p *page) {
	sid := p.r.PathValue("sid")
	if !p.confirmed(c, "confirm", "yes", "the rejection") {
		return
	}
	if _, err := c.api.Reject(p.r.Context(), p.caller, sid, admin.RejectRequest{Reason: p.r.PostFormValue("reason")}); err != nil {
		p.fail(c, "Reject", err)
		return
	}
	http.Redirect(p.w, p.r, "/proxy/enrollments/"+url.PathEscape(sid)+"?done=rejected", http.StatusSeeOther)
}

// putPolicy replaces the stored rules; a bad rule is shown with its line,
// the text kept in the form, nothing changed.
func (c *Console) putPolicy(p *page) {
	text := p.r.PostFormValue("rules")
	text = strings.ReplaceAll(text, "\r\n", "\n")
	if _, err := c.api.SetPolicy(p.r.Context(), p.caller, text); err != nil {
		var pe *policy.ParseError
		if errors.As(err, &pe) {
			c.showPolicy(p, http.StatusBadRequest, map[string]any{"Stored": text, "PolicyError": pe.Error(), "PolicyLine": pe.Line})
			return
		}
		p.fail(c, "Policy", err)
		return
	}
	c.showPolicy(p, 200, map[string]any{"Saved": true})
}

func (c *Console) checkPolicy(p *page) {
	req := admin.PolicyCheckRequest{AgentID: p.r.PostFormValue("agent_id"), Action: p.r.PostFormValue("action"),
		Server: p.r.PostFormValue("server"), Name: p.r.PostFormValue("name")}
	res, err := c.api.CheckPolicy(req)
	if err != nil {
		if pr := problem(err); pr != nil {
			c.showPolicy(p, pr.Status, map[string]any{"CheckError": pr.Message, "CheckReq": req})
			return
		}
		p.fail(c, "Policy check", err)
		return
	}
	c.showPolicy(p, 200, map[string]any{"Check": res, "CheckReq": req})
}

func (c *Console) verify(p *page) {
	res, err := c.api.Verify(p.r.Context(), url.Values{})
	if err != nil {
		p.fail(c, "Verify", err)
		return
	}
	c.showAudit(p, 200, map[string]any{"Verified": res})
}

// export is the admin API's export, recorded as the dashboard's.
func (c *Console) export(p *page) {
	c.api.Serve("GET /v1/admin/audit/export", p.w, p.r, p.caller)
}

// bundle downloads a bundle of the rows between two dates (or all).
func (c *Console) bundle(p *page) {
	var since, before time.Time
	for _, f := range []struct {
		name string
		t    *time.Time
	}{{"start", &since}, {"end", &before}} {
		if v := p.r.PostFormValue(f.name); v != "" {
			t, err := time.Parse(time.DateOnly, v)
			if err != nil {
				p.show(c, http.StatusBadRequest, "message", map[string]any{"Title": "Bundle", "Message": f.name + " must be a date (YYYY-MM-DD).",
					"Link": "/proxy/audit"})
				return
			}
			*f.t = t
		}
	}
	from, to, err := c.m.AuditSeqRange(p.r.Context(), since, before)
	if err != nil {
		p.fail(c, "Bundle", err)
		return
	}
	if from == 0 {
		p.show(c, http.StatusNotFound, "message", map[string]any{"Title": "Bundle", "Message": "No audit rows in that range.", "Link": "/proxy/audit"})
		return
	}
	p.w.Header().Set("Content-Type", "application/gzip")
	p.w.Header().Set("Content-Disposition", `attachment; filename="mastio-audit-bundle.tar.gz"`)
	sent := &countingWriter{w: p.w}
	if _, err := c.m.AuditBundle(p.r.Context(), from, to, sent, map[string]any{"remote_ip": p.caller.RemoteIP}); err != nil {
		if sent.n > 0 {
			panic(http.ErrAbortHandler) // never a truncated bundle that looks whole
		}
		p.w.Header().Del("Content-Disposition")
		var re *audit.RangeError
		if errors.As(err, &re) {
			p.show(c, http.StatusBadRequest, "message", map[string]any{"Title": "Bundle", "Message": re.Error(), "Link": "/proxy/audit"})
			return
		}
		p.fail(c, "Bundle", err)
	}
}

type countingWriter struct {
	w http.ResponseWriter
	n int
}

func (c *countingWriter) Write(b []byte) (int, error) {
	c.n += len(b)
	return c.w.Write(b)
}

func (c *Console) rotateKey(p *page) {
	if !p.confirmed(c, "confirm", "rotate", `the rotation (type "rotate")`) {
		return
	}
	rot, err := c.api.RotateSigningKey(p.r.Context(), p.caller, admin.RotateSigningKeyRequest{})
	if err != nil {
		p.fail(c, "Rotate signing key", err)
		return
	}
	p.show(c, 200, "keys", map[string]any{"Title": "Signing keys", "Keys": c.m.SigningKeys(), "Rotated": rot})
}

// putServer registers an MCP server behind /v1/mcp (name and URL; the
// other settings are the admin API's), checked before it is stored.
func (c *Console) putServer(p *page) {
	req := admin.PutServerRequest{Name: strings.TrimSpace(p.r.PostFormValue("name")), URL: strings.TrimSpace(p.r.PostFormValue("url")),
		BearerToken: p.r.PostFormValue("bearer_token")}
	if _, err := c.api.PutServer(p.r.Context(), p.caller, req); err != nil {
		if pr := problem(err); pr != nil {
			c.showPolicy(p, pr.Status, map[string]any{"ServerError": pr.Message, "ServerName": req.Name, "ServerURL": req.URL})
			return
		}
		p.fail(c, "MCP server", err)
		return
	}
	http.Redirect(p.w, p.r, "/proxy/policy", http.StatusSeeOther)
}

func (c *Console) removeServer(p *page) {
	if !p.confirmed(c, "confirm", "yes", "the removal") {
		return
	}
	if _, err := c.api.DeleteServer(p.r.Context(), p.caller, p.r.PathValue("name")); err != nil {
		p.fail(c, "MCP server", err)
		return
	}
	http.Redirect(p.w, p.r, "/proxy/policy", http.StatusSeeOther)
}
