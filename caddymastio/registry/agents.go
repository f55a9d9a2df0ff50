package registry

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Agent statuses.
const (
	statusActive  = "active"
	statusRevoked = "revoked"
)

// Agent is a registered agent.
type Agent struct {
	AgentID          string     `json:"agent_id"`
	Name             string     `json:"name"`
	DisplayName      string     `json:"display_name"`
	SPIFFEID         string     `json:"spiffe_id"`
	Status           string     `json:"status"`
	Capabilities     []string   `json:"capabilities"`
	Groups           []string   `json:"groups"`
	EnrollmentMethod string     `json:"enrollment_method"`
	DPoPJKT          string     `json:"dpop_jkt,omitempty"`
	CreatedAt        time.Time  `json:"created_at"`
	UpdatedAt        time.Time  `json:"updated_at"`
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevokedReason    string     `json:"revoked_reason,omitempty"`
	// Certificates are the agent's pinned certificates, newest first.
	Certificates []CertInfo `json:"certificates"`
}

// CertInfo describes one certificate issued to an agent.
type CertInfo struct {
	SHA256     string     `json:"sha256"`
	Serial     string     `json:"serial"`
	Status     string     `json:"status"`
	NotBefore  time.Time  `json:"not_before"`
	NotAfter   time.Time  `json:"not_after"`
	GraceUntil *time.Time `json:"grace_until,omitempty"`
}

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

func mintKey() (crypto.PublicKey, string, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	pemBytes, err := pki.MarshalPrivateKey(k)
	if err != nil {
		return nil, "", err
	}
	return k.Public(), string(pemBytes), nil
}

func (r *Registry) issue(p Policy, name string, pub crypto.PublicKey) (*x509.Certificate, string, string, error) {
	keyPEM := ""
	if pub == nil {
		var err error
		if pub, keyPEM, err = mintKey(); err != nil {
			return nil, "", "", fmt.Errorf("minting agent key: %w", err)
		}
	}
	cert, err := r.cfg.CA.IssueAgent(pki.AgentCert{
		PublicKey: pub,
		Identity:  pki.AgentIdentity{TrustDomain: p.TrustDomain, Org: r.cfg.Org, Name: name},
		Lifetime:  p.AgentCertLifetime,
	})
	if err != nil {
		return nil, "", "", &Error{Status: 400, Code: "invalid_request", Field: "public_key_pem", Message: err.Error()}
	}
	return cert, string(r.cfg.CA.ChainPEM(cert)), keyPEM, nil
}

func certSum(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

func insertCert(ctx context.Context, tx *sql.Tx, agentID string, cert *x509.Certificate, chainPEM string, now time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO agent_certs
		(cert_sha256, agent_id, serial, cert_pem, not_before, not_after, status, created_at)
		VALUES (?, ?, ?, ?, ?, ?, 'active', ?)`,
		certSum(cert), agentID, cert.SerialNumber.Text(16), chainPEM,
		store.FormatTime(cert.NotBefore), store.FormatTime(cert.NotAfter), store.FormatTime(now))
	return err
}

func mergeDetails(base map[string]any, extra map[string]any) map[string]any {
	for k, v := range extra {
		base[k] = v
	}
	return base
}

// CreateAgent registers an agent and issues its first certificate.
func (r *Registry) CreateAgent(ctx context.Context, p Policy, na NewAgent) (*Issued, error) {
	return r.createAgent(ctx, p, na, nil)
}

// createAgent does the work of CreateAgent; within, when set, runs inside
// the same transaction (enrollment approval).
func (r *Registry) createAgent(ctx context.Context, p Policy, na NewAgent, within func(tx *sql.Tx, iss *Issued) error) (*Issued, error) {
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
	capsJSON, _ := json.Marshal(caps)
	groupsJSON, _ := json.Marshal(groups)
	iss := &Issued{CertPEM: chainPEM, KeyPEM: keyPEM, Cert: cert}
	err = r.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO agents
			(agent_id, name, display_name, spiffe_id, status, capabilities, groups_json, enrollment_method, dpop_jkt, created_at, updated_at)
			VALUES (?, ?, ?, ?, 'active', ?, ?, ?, NULLIF(?, ''), ?, ?)`,
			id, na.Name, na.DisplayName, spiffe, string(capsJSON), string(groupsJSON), na.Method, na.DPoPJKT,
			store.FormatTime(now), store.FormatTime(now)); err != nil {
			if strings.Contains(err.Error(), "UNIQUE") {
				return errorf(409, "agent_exists", "agent %s already exists", id)
			}
			return fmt.Errorf("inserting agent: %w", err)
		}
		if err := insertCert(ctx, tx, id, cert, chainPEM, now); err != nil {
			return fmt.Errorf("inserting certificate: %w", err)
		}
		if within != nil {
			if err := within(tx, iss); err != nil {
				return err
			}
		}
		_, err := r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "agent.created", Actor: na.Actor, Subject: id,
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
		return err
	})
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
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
	agents, err := r.listAgents(ctx, `WHERE agent_id = ?`, id)
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
	case "":
		return r.listAgents(ctx, ``)
	case statusActive, statusRevoked:
		return r.listAgents(ctx, `WHERE status = ?`, status)
	}
	return nil, fieldError("status", "want active or revoked")
}

func (r *Registry) listAgents(ctx context.Context, where string, args ...any) ([]*Agent, error) {
	rows, err := r.cfg.DB.QueryContext(ctx, `SELECT agent_id, name, display_name, spiffe_id, status, capabilities, groups_json,
		enrollment_method, COALESCE(dpop_jkt, ''), created_at, updated_at, COALESCE(revoked_at, ''), COALESCE(revoked_reason, '')
		FROM agents `+where+` ORDER BY agent_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	var out []*Agent
	byID := map[string]*Agent{}
	for rows.Next() {
		a := &Agent{}
		var caps, groups, created, updated, revoked string
		if err := rows.Scan(&a.AgentID, &a.Name, &a.DisplayName, &a.SPIFFEID, &a.Status, &caps, &groups,
			&a.EnrollmentMethod, &a.DPoPJKT, &created, &updated, &revoked, &a.RevokedReason); err != nil {
			rows.Close()
			return nil, err
		}
		json.Unmarshal([]byte(caps), &a.Capabilities)
		json.Unmarshal([]byte(groups), &a.Groups)
		a.CreatedAt, _ = time.Parse(store.TimeFormat, created)
		a.UpdatedAt, _ = time.Parse(store.TimeFormat, updated)
		if revoked != "" {
			t, _ := time.Parse(store.TimeFormat, revoked)
			a.RevokedAt = &t
		}
		a.Certificates = []CertInfo{}
		out = append(out, a)
		byID[a.AgentID] = a
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return out, nil
	}
	certWhere, certArgs := ``, []any{}
	if len(out) == 1 {
		certWhere, certArgs = `WHERE agent_id = ?`, []any{out[0].AgentID}
	}
	rows, err = r.cfg.DB.QueryContext(ctx, `SELECT agent_id, cert_sha256, serial, status, not_before, not_after, COALESCE(grace_until, '')
		FROM agent_certs `+certWhere+` ORDER BY created_at DESC, rowid DESC`, certArgs...)
	if err != nil {
		return nil, fmt.Errorf("listing certificates: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, nb, na, grace string
		var c CertInfo
		if err := rows.Scan(&id, &c.SHA256, &c.Serial, &c.Status, &nb, &na, &grace); err != nil {
			return nil, err
		}
		c.NotBefore, _ = time.Parse(store.TimeFormat, nb)
		c.NotAfter, _ = time.Parse(store.TimeFormat, na)
		if grace != "" {
			t, _ := time.Parse(store.TimeFormat, grace)
			c.GraceUntil = &t
		}
		if a := byID[id]; a != nil {
			a.Certificates = append(a.Certificates, c)
		}
	}
	return out, rows.Err()
}

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
	err := r.withTx(ctx, func(tx *sql.Tx) error {
		var status, revokedAt string
		err := tx.QueryRowContext(ctx, `SELECT status, COALESCE(revoked_at, '') FROM agents WHERE agent_id = ?`, id).Scan(&status, &revokedAt)
		if errors.Is(err, sql.ErrNoRows) {
			return errorf(404, "agent_not_found", "no agent %s", id)
		}
		if err != nil {
			return err
		}
		if status == statusRevoked {
			return errorf(409, "agent_already_revoked", "agent %s was already revoked at %s", id, revokedAt)
		}
		rows, err := tx.QueryContext(ctx, `SELECT cert_sha256 FROM agent_certs WHERE agent_id = ? AND status != 'retired'`, id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var s string
			rows.Scan(&s)
			sums = append(sums, s)
		}
		rows.Close()
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET status = 'revoked', revoked_at = ?, revoked_reason = ?, updated_at = ?
			WHERE agent_id = ?`, store.FormatTime(now), reason, store.FormatTime(now), id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agent_certs SET status = 'retired', retired_at = ?
			WHERE agent_id = ? AND status != 'retired'`, store.FormatTime(now), id); err != nil {
			return err
		}
		_, err = r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "agent.revoked", Actor: actor, Subject: id,
			Details: mergeDetails(map[string]any{"reason": reason, "certs_retired": sums}, details)})
		return err
	})
	if err != nil {
		g.Unlock()
		return nil, err
	}
	r.mu.Lock()
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
func (r *Registry) RotateCert(ctx context.Context, p Policy, id string, rot Rotation) (*Issued, error) {
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
	err = r.withTx(ctx, func(tx *sql.Tx) error {
		var status string
		if err := tx.QueryRowContext(ctx, `SELECT status FROM agents WHERE agent_id = ?`, id).Scan(&status); err != nil {
			return errorf(404, "agent_not_found", "no agent %s", id)
		}
		if status == statusRevoked {
			if rot.Grace > 0 {
				return fieldError("grace_seconds", "agent %s is revoked: its old certificates cannot be given a grace period", id)
			}
			reactivated = true
			if _, err := tx.ExecContext(ctx, `UPDATE agents SET status = 'active', revoked_at = NULL, revoked_reason = NULL,
				dpop_jkt = NULL WHERE agent_id = ?`, id); err != nil {
				return err
			}
		}
		rows, err := tx.QueryContext(ctx, `SELECT cert_sha256 FROM agent_certs WHERE agent_id = ? AND status = 'active'`, id)
		if err != nil {
			return err
		}
		for rows.Next() {
			var s string
			rows.Scan(&s)
			old = append(old, s)
		}
		rows.Close()
		if rot.Grace > 0 {
			_, err = tx.ExecContext(ctx, `UPDATE agent_certs SET status = 'grace', grace_until = ? WHERE agent_id = ? AND status = 'active'`,
				store.FormatTime(graceUntil), id)
		} else {
			_, err = tx.ExecContext(ctx, `UPDATE agent_certs SET status = 'retired', retired_at = ? WHERE agent_id = ? AND status = 'active'`,
				store.FormatTime(now), id)
		}
		if err != nil {
			return err
		}
		if err := insertCert(ctx, tx, id, cert, chainPEM, now); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET updated_at = ? WHERE agent_id = ?`, store.FormatTime(now), id); err != nil {
			return err
		}
		d := map[string]any{"old_cert_sha256": old, "new_cert_sha256": certSum(cert), "key_minted": keyPEM != "",
			"grace_seconds": int64(rot.Grace / time.Second), "reactivated": reactivated}
		if rot.Grace > 0 {
			d["grace_until"] = graceUntil.Format(time.RFC3339)
		}
		_, err = r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "agent.cert_rotated", Actor: rot.Actor, Subject: id,
			Details: mergeDetails(d, rot.Details)})
		return err
	})
	if err != nil {
		g.Unlock()
		return nil, err
	}
	r.mu.Lock()
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
	err = r.withTx(ctx, func(tx *sql.Tx) error {
		var status, old string
		err := tx.QueryRowContext(ctx, `SELECT status, COALESCE(dpop_jkt, '') FROM agents WHERE agent_id = ?`, id).Scan(&status, &old)
		if errors.Is(err, sql.ErrNoRows) {
			return errorf(404, "agent_not_found", "no agent %s", id)
		}
		if err != nil {
			return err
		}
		if status != statusActive {
			return errorf(409, "agent_revoked", "agent %s is revoked", id)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE agents SET dpop_jkt = ?, updated_at = ? WHERE agent_id = ?`,
			jkt, store.FormatTime(r.now()), id); err != nil {
			return err
		}
		_, err = r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "agent.dpop_jwk_set", Actor: actor, Subject: id,
			Details: mergeDetails(map[string]any{"old_jkt": old, "new_jkt": jkt}, details)})
		return err
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
	err := r.withTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT cert_sha256, agent_id FROM agent_certs WHERE status = 'grace' AND grace_until <= ?`,
			store.FormatTime(now))
		if err != nil {
			return err
		}
		type row struct{ sum, id string }
		var expired []row
		for rows.Next() {
			var x row
			rows.Scan(&x.sum, &x.id)
			expired = append(expired, x)
		}
		rows.Close()
		for _, x := range expired {
			if _, err := tx.ExecContext(ctx, `UPDATE agent_certs SET status = 'retired', retired_at = ? WHERE cert_sha256 = ?`,
				store.FormatTime(now), x.sum); err != nil {
				return err
			}
			if _, err := r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "agent.cert_grace_expired", Actor: "system", Subject: x.id,
				Details: map[string]any{"cert_sha256": x.sum}}); err != nil {
				return err
			}
		}
		n = len(expired)
		for _, x := range expired {
			agents = append(agents, x.id)
		}
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
