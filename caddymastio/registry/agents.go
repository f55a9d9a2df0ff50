package registry

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Agent statuses.
const (
	statusActive  = store.AgentActive
	statusRevoked = store.AgentRevoked
)

// Agent is a registered agent, with its certificates newest first.
type Agent = store.Agent

// CertInfo describes one certificate issued to an agent.
type CertInfo = store.Cert

// NewAgent asks for an agent to be registered.
type NewAgent struct {
	Name         string
	DisplayName  string
	Capabilities []string
	Groups       []string
	// PublicKey to certify; nil mints an EC P-256 key whose private half is
	// returned once and never stored.
	PublicKey crypto.PublicKey
	DPoPJKT   string
	Method    string // admin | enrollment
	Actor     string
	// AuditDetails are merged into the audit row (e.g. remote_ip).
	AuditDetails map[string]any
}

// Issued is an agent with freshly issued credentials.
type Issued struct {
	Agent   *Agent
	CertPEM string // leaf followed by the intermediate
	// KeyPEM is the minted private key (PKCS#8), only when the Mastio made
	// the key; it is not kept anywhere.
	KeyPEM string
	Cert   *x509.Certificate
}

// AgentID forms the registry id of name under this org.
func (r *Registry) AgentID(name string) string { return r.cfg.Org + "::" + name }

// ResolveAgentName accepts a bare name or "<org>::<name>" with this org.
func (r *Registry) ResolveAgentName(field, s string) (string, error) {
	name := s
	if org, n, ok := strings.Cut(s, "::"); ok {
		if org != r.cfg.Org {
			return "", fieldError(field, "agent id %q is not under this organisation (%s)", s, r.cfg.Org)
		}
		name = n
	}
	if err := pki.ValidateName("agent name", name); err != nil {
		return "", fieldError(field, "%v", err)
	}
	return name, nil
}

func mergeDetails(base map[string]any, extra map[string]any) map[string]any {
	for k, v := range extra {
		base[k] = v
	}
	return base
}

// CreateAgent registers an agent and issues its first certificate.
func (r *Registry) CreateAgent(ctx context.Context, p Issuance, na NewAgent) (*Issued, error) {
	return r.createAgent(ctx, p, na, nil)
}

// createAgent does the work of CreateAgent; within, when set, runs inside
// the same transaction (enrollment approval).
func (r *Registry) createAgent(ctx context.Context, p Issuance, na NewAgent, within func(c *audit.Change, iss *Issued) error) (*Issued, error) {
	if err := pki.ValidateName("agent name", na.Name); err != nil {
		return nil, fieldError("agent_name", "%v", err)
	}
	if len(na.DisplayName) > 200 {
		return nil, fieldError("display_name", "at most 200 characters")
	}
	caps, err := checkLabels("capabilities", na.Capabilities)
	if err != nil {
		return nil, err
	}
	groups, err := checkLabels("groups", na.Groups)
	if err != nil {
		return nil, err
	}
	id := r.AgentID(na.Name)
	if r.exists(id) {
		return nil, errorf(409, "agent_exists", "agent %s already exists (use rotate-cert to issue it a new certificate)", id)
	}
	cert, chainPEM, keyPEM, err := r.issue(p, na.Name, na.PublicKey)
	if err != nil {
		return nil, err
	}
	spiffe := cert.URIs[0].String()
	now := r.now()
	iss := &Issued{CertPEM: chainPEM, KeyPEM: keyPEM, Cert: cert}
	err = r.change(ctx, func(c *audit.Change) error {
		err := c.InsertAgent(ctx, &store.Agent{AgentID: id, Name: na.Name, DisplayName: na.DisplayName, SPIFFEID: spiffe,
			Status: store.AgentActive, Capabilities: caps, Groups: groups, EnrollmentMethod: na.Method, DPoPJKT: na.DPoPJKT,
			CreatedAt: now, UpdatedAt: now})
		if errors.Is(err, store.ErrConflict) {
			return errorf(409, "agent_exists", "agent %s already exists", id)
		}
		if err != nil {
			return err
		}
		if err := c.InsertCert(ctx, newCert(id, cert, chainPEM, now)); err != nil {
			return err
		}
		if within != nil {
			if err := within(c, iss); err != nil {
				return err
			}
		}
		c.Record(audit.Event{Type: "agent.created", Actor: na.Actor, Subject: id,
			Details: mergeDetails(map[string]any{
				"spiffe_id":    spiffe,
				"method":       na.Method,
				"capabilities": caps,
				"groups":       groups,
				"cert_sha256":  certSum(cert),
				"cert_serial":  cert.SerialNumber.Text(16),
				"key_minted":   keyPEM != "",
				"dpop_jkt":     na.DPoPJKT,
			}, na.AuditDetails)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.gen++
	r.agents[id] = agentEntry{spiffeID: spiffe, caps: caps, groups: groups}
	r.pins[sha256.Sum256(cert.Raw)] = pinEntry{agentID: id, state: certActive}
	r.mu.Unlock()
	iss.Agent, err = r.GetAgent(ctx, id)
	return iss, err
}

func (r *Registry) exists(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.agents[id]
	return ok
}

// GetAgent returns one agent with its certificates.
func (r *Registry) GetAgent(ctx context.Context, id string) (*Agent, error) {
	return getAgent(ctx, r.cfg.Store, id)
}

// getAgent reads one agent through q (the store, or a change reading its
// own writes).
func getAgent(ctx context.Context, q store.Reader, id string) (*Agent, error) {
	agents, err := q.Agents(ctx, store.AgentFilter{ID: id})
	if err != nil {
		return nil, err
	}
	if len(agents) == 0 {
		return nil, errorf(404, "agent_not_found", "no agent %s", id)
	}
	return agents[0], nil
}

// ListAgents returns every agent (status "" for all, or active/revoked).
func (r *Registry) ListAgents(ctx context.Context, status string) ([]*Agent, error) {
	switch status {
	case "", statusActive, statusRevoked:
		return r.cfg.Store.Agents(ctx, store.AgentFilter{Status: status})
	}
	return nil, fieldError("status", "want active or revoked")
}

// pinSums are the SHA-256 of certs.
func pinSums(certs []*store.Cert) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = c.SHA256
	}
	return out
}

// revokedAtFormat is how a revocation time is named in refusals.
const revokedAtFormat = "2006-01-02T15:04:05.000000000Z"

// Revoke revokes an agent: every certificate it holds stops working at
// once, on open connections too. It cannot be undone.
func (r *Registry) Revoke(ctx context.Context, id, reason, actor string, details map[string]any) (*Agent, error) {
	if reason == "" {
		reason = "unspecified"
	}
	if len(reason) > 500 {
		return nil, fieldError("reason", "at most 500 characters")
	}
	now := r.now()
	var sums []string
	// Answers to this agent being audited finish first; later ones see the
	// revocation (see Deliver).
	g := r.gate(id)
	g.Lock()
	err := r.change(ctx, func(c *audit.Change) error {
		a, err := getAgent(ctx, c, id)
		if err != nil {
			return err
		}
		if a.Status == statusRevoked {
			return errorf(409, "agent_already_revoked", "agent %s was already revoked at %s", id, a.RevokedAt.Format(revokedAtFormat))
		}
		live, err := c.Certs(ctx, store.CertFilter{AgentID: id, Statuses: []string{store.CertActive, store.CertGrace}})
		if err != nil {
			return err
		}
		sums = pinSums(live)
		a.Status, a.RevokedAt, a.RevokedReason, a.UpdatedAt = statusRevoked, &now, reason, now
		if err := c.UpdateAgent(ctx, a); err != nil {
			return err
		}
		for _, cert := range live {
			cert.Status, cert.RetiredAt = store.CertRetired, &now
			if err := c.UpdateCert(ctx, cert); err != nil {
				return err
			}
		}
		c.Record(audit.Event{Type: "agent.revoked", Actor: actor, Subject: id,
			Details: mergeDetails(map[string]any{"reason": reason, "certs_retired": sums}, details)})
		return nil
	})
	if err != nil {
		g.Unlock()
		return nil, err
	}
	r.mu.Lock()
	r.gen++
	e := r.agents[id]
	e.revoked = true
	r.agents[id] = e
	for _, s := range sums {
		if k, err := parsePin(s); err == nil {
			p := r.pins[k]
			p.state = certRetired
			r.pins[k] = p
		}
	}
	r.mu.Unlock()
	g.Unlock()
	r.changed(id)
	return r.GetAgent(ctx, id)
}

// Rotation asks for a new certificate for an agent.
type Rotation struct {
	// PublicKey to certify; nil mints a new key.
	PublicKey crypto.PublicKey
	// Grace keeps the previous certificates valid for this long; zero (the
	// default) retires them at once.
	Grace   time.Duration
	Actor   string
	Details map[string]any
}

// MaxGrace bounds a rotation grace period.
const MaxGrace = 7 * 24 * time.Hour

// RotateCert issues the agent a new certificate and retires the old ones
// (at once, or at the end of the requested grace period).
//
// On a revoked agent it is the second step of the compromise runbook
// ("revoke, then re-issue clean material to the legitimate workload"): the
// agent becomes active again with the new certificate only. Its old
// certificates stay dead (a grace period is refused) and its registered
// DPoP key is cleared, since it may have leaked with the rest.
func (r *Registry) RotateCert(ctx context.Context, p Issuance, id string, rot Rotation) (*Issued, error) {
	if rot.Grace < 0 || rot.Grace > MaxGrace {
		return nil, fieldError("grace_seconds", "must be between 0 and %d", int(MaxGrace.Seconds()))
	}
	org, name, err := pki.ParseAgentID(id)
	if err != nil || org != r.cfg.Org {
		return nil, errorf(404, "agent_not_found", "no agent %s", id)
	}
	r.mu.RLock()
	a, known := r.agents[id]
	r.mu.RUnlock()
	if !known {
		return nil, errorf(404, "agent_not_found", "no agent %s", id)
	}
	if a.revoked && rot.Grace > 0 {
		return nil, fieldError("grace_seconds", "agent %s is revoked: its old certificates cannot be given a grace period", id)
	}
	cert, chainPEM, keyPEM, err := r.issue(p, name, rot.PublicKey)
	if err != nil {
		return nil, err
	}
	now := r.now()
	graceUntil := now.Add(rot.Grace)
	var old []string
	reactivated := false
	g := r.gate(id)
	g.Lock()
	err = r.change(ctx, func(c *audit.Change) error {
		a, err := getAgent(ctx, c, id)
		if err != nil {
			return err
		}
		if a.Status == statusRevoked {
			if rot.Grace > 0 {
				return fieldError("grace_seconds", "agent %s is revoked: its old certificates cannot be given a grace period", id)
			}
			reactivated = true
			a.Status, a.RevokedAt, a.RevokedReason, a.DPoPJKT = statusActive, nil, "", ""
		}
		active, err := c.Certs(ctx, store.CertFilter{AgentID: id, Statuses: []string{store.CertActive}})
		if err != nil {
			return err
		}
		old = pinSums(active)
		for _, cert := range active {
			if rot.Grace > 0 {
				cert.Status, cert.GraceUntil = store.CertGrace, &graceUntil
			} else {
				cert.Status, cert.RetiredAt = store.CertRetired, &now
			}
			if err := c.UpdateCert(ctx, cert); err != nil {
				return err
			}
		}
		if err := c.InsertCert(ctx, newCert(id, cert, chainPEM, now)); err != nil {
			return err
		}
		a.UpdatedAt = now
		if err := c.UpdateAgent(ctx, a); err != nil {
			return err
		}
		d := map[string]any{"old_cert_sha256": old, "new_cert_sha256": certSum(cert), "key_minted": keyPEM != "",
			"grace_seconds": int64(rot.Grace / time.Second), "reactivated": reactivated}
		if rot.Grace > 0 {
			d["grace_until"] = graceUntil.Format(time.RFC3339)
		}
		c.Record(audit.Event{Type: "agent.cert_rotated", Actor: rot.Actor, Subject: id, Details: mergeDetails(d, rot.Details)})
		return nil
	})
	if err != nil {
		g.Unlock()
		return nil, err
	}
	r.mu.Lock()
	r.gen++
	for _, s := range old {
		if k, err := parsePin(s); err == nil {
			e := r.pins[k]
			if rot.Grace > 0 {
				e.state, e.graceUntil = certGrace, graceUntil
			} else {
				e.state = certRetired
			}
			r.pins[k] = e
		}
	}
	r.pins[sha256.Sum256(cert.Raw)] = pinEntry{agentID: id, state: certActive}
	if reactivated {
		e := r.agents[id]
		e.revoked = false
		r.agents[id] = e
	}
	r.mu.Unlock()
	g.Unlock()
	r.changed(id)
	iss := &Issued{CertPEM: chainPEM, KeyPEM: keyPEM, Cert: cert}
	iss.Agent, err = r.GetAgent(ctx, id)
	return iss, err
}

// SetDPoPKey registers (or replaces) the agent's DPoP public key, given as
// a JWK; it returns the RFC 7638 thumbprint stored.
func (r *Registry) SetDPoPKey(ctx context.Context, id string, jwk json.RawMessage, actor string, details map[string]any) (*Agent, error) {
	jkt, err := JWKThumbprint(jwk)
	if err != nil {
		return nil, fieldError("dpop_jwk", "%v", err)
	}
	err = r.change(ctx, func(c *audit.Change) error {
		a, err := getAgent(ctx, c, id)
		if err != nil {
			return err
		}
		if a.Status != statusActive {
			return errorf(409, "agent_revoked", "agent %s is revoked", id)
		}
		old := a.DPoPJKT
		a.DPoPJKT, a.UpdatedAt = jkt, r.now()
		if err := c.UpdateAgent(ctx, a); err != nil {
			return err
		}
		c.Record(audit.Event{Type: "agent.dpop_jwk_set", Actor: actor, Subject: id,
			Details: mergeDetails(map[string]any{"old_jkt": old, "new_jkt": jkt}, details)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.GetAgent(ctx, id)
}

// ExpireGrace retires certificates whose grace period has ended and
// audits each; Check already refuses them, this keeps the table honest.
func (r *Registry) ExpireGrace(ctx context.Context) (int, error) {
	now := r.now()
	n := 0
	var agents []string
	err := r.change(ctx, func(c *audit.Change) error {
		expired, err := c.Certs(ctx, store.CertFilter{GraceEndedBy: now})
		if err != nil {
			return err
		}
		for _, cert := range expired {
			cert.Status, cert.RetiredAt = store.CertRetired, &now
			if err := c.UpdateCert(ctx, cert); err != nil {
				return err
			}
			c.Record(audit.Event{Type: "agent.cert_grace_expired", Actor: "system", Subject: cert.AgentID,
				Details: map[string]any{"cert_sha256": cert.SHA256}})
			agents = append(agents, cert.AgentID)
		}
		n = len(expired)
		return nil
	})
	if err != nil || n == 0 {
		return n, err
	}
	if err := r.reload(ctx); err != nil {
		return n, err
	}
	for _, id := range agents {
		r.changed(id)
	}
	return n, nil
}
