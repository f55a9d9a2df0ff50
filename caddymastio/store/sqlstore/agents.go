package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Agents implements store.Reader.
func (r Reader) Agents(ctx context.Context, f store.AgentFilter) ([]*store.Agent, error) {
	var where []string
	var args []any
	if f.ID != "" {
		where, args = append(where, "agent_id = ?"), append(args, f.ID)
	}
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, f.Status)
	}
	rows, err := r.Q.QueryContext(ctx, `SELECT agent_id, name, display_name, spiffe_id, status, capabilities, groups_json,
		enrollment_method, COALESCE(dpop_jkt, ''), created_at, updated_at, COALESCE(revoked_at, ''), COALESCE(revoked_reason, '')
		FROM agents`+whereClause(where)+` ORDER BY agent_id`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing agents: %w", err)
	}
	out := []*store.Agent{}
	byID := map[string]*store.Agent{}
	for rows.Next() {
		a := &store.Agent{Certificates: []*store.Cert{}}
		var caps, groups, created, updated, revoked string
		if err := rows.Scan(&a.AgentID, &a.Name, &a.DisplayName, &a.SPIFFEID, &a.Status, &caps, &groups,
			&a.EnrollmentMethod, &a.DPoPJKT, &created, &updated, &revoked, &a.RevokedReason); err != nil {
			rows.Close()
			return nil, err
		}
		json.Unmarshal([]byte(caps), &a.Capabilities)
		json.Unmarshal([]byte(groups), &a.Groups)
		a.CreatedAt, a.UpdatedAt, a.RevokedAt = parseTime(created), parseTime(updated), parseOptTime(revoked)
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
	cf := store.CertFilter{}
	if len(out) == 1 {
		cf.AgentID = out[0].AgentID
	}
	certs, err := r.Certs(ctx, cf)
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		if a := byID[c.AgentID]; a != nil {
			a.Certificates = append(a.Certificates, c)
		}
	}
	return out, nil
}

// Certs implements store.Reader; certificates come newest first.
func (r Reader) Certs(ctx context.Context, f store.CertFilter) ([]*store.Cert, error) {
	var where []string
	var args []any
	if f.SHA256 != "" {
		where, args = append(where, "cert_sha256 = ?"), append(args, f.SHA256)
	}
	if f.AgentID != "" {
		where, args = append(where, "agent_id = ?"), append(args, f.AgentID)
	}
	if len(f.Statuses) > 0 {
		where = append(where, "status IN (?"+strings.Repeat(", ?", len(f.Statuses)-1)+")")
		for _, s := range f.Statuses {
			args = append(args, s)
		}
	}
	if !f.GraceEndedBy.IsZero() {
		where, args = append(where, "status = 'grace' AND grace_until <= ?"), append(args, formatTime(f.GraceEndedBy))
	}
	rows, err := r.Q.QueryContext(ctx, `SELECT cert_sha256, agent_id, serial, cert_pem, status, not_before, not_after,
		COALESCE(grace_until, ''), created_at, COALESCE(retired_at, '')
		FROM agent_certs`+whereClause(where)+` ORDER BY created_at DESC, issued_seq DESC`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing certificates: %w", err)
	}
	defer rows.Close()
	out := []*store.Cert{}
	for rows.Next() {
		c := &store.Cert{}
		var nb, na, grace, created, retired string
		if err := rows.Scan(&c.SHA256, &c.AgentID, &c.Serial, &c.ChainPEM, &c.Status, &nb, &na, &grace, &created, &retired); err != nil {
			return nil, err
		}
		c.NotBefore, c.NotAfter, c.CreatedAt = parseTime(nb), parseTime(na), parseTime(created)
		c.GraceUntil, c.RetiredAt = parseOptTime(grace), parseOptTime(retired)
		out = append(out, c)
	}
	return out, rows.Err()
}

// InsertAgent implements store.Tx.
func (t *Tx) InsertAgent(ctx context.Context, a *store.Agent) error {
	caps, groups := jsonList(a.Capabilities), jsonList(a.Groups)
	_, err := t.Q.ExecContext(ctx, `INSERT INTO agents
		(agent_id, name, display_name, spiffe_id, status, capabilities, groups_json, enrollment_method, dpop_jkt, created_at,
		 updated_at, revoked_at, revoked_reason)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?, NULLIF(?, ''), NULLIF(?, ''))`,
		a.AgentID, a.Name, a.DisplayName, a.SPIFFEID, a.Status, caps, groups, a.EnrollmentMethod, a.DPoPJKT,
		formatTime(a.CreatedAt), formatTime(a.UpdatedAt), formatOptTime(a.RevokedAt), a.RevokedReason)
	if err != nil {
		return fmt.Errorf("inserting agent %s: %w", a.AgentID, t.conflict(err))
	}
	return nil
}

// UpdateAgent implements store.Tx.
func (t *Tx) UpdateAgent(ctx context.Context, a *store.Agent) error {
	res, err := t.Q.ExecContext(ctx, `UPDATE agents SET name = ?, display_name = ?, spiffe_id = ?, status = ?, capabilities = ?,
		groups_json = ?, enrollment_method = ?, dpop_jkt = NULLIF(?, ''), updated_at = ?, revoked_at = NULLIF(?, ''),
		revoked_reason = NULLIF(?, '') WHERE agent_id = ?`,
		a.Name, a.DisplayName, a.SPIFFEID, a.Status, jsonList(a.Capabilities), jsonList(a.Groups), a.EnrollmentMethod, a.DPoPJKT,
		formatTime(a.UpdatedAt), formatOptTime(a.RevokedAt), a.RevokedReason, a.AgentID)
	if err != nil {
		return fmt.Errorf("updating agent %s: %w", a.AgentID, t.conflict(err))
	}
	return affected(res, "agent "+a.AgentID)
}

// InsertCert implements store.Tx.
func (t *Tx) InsertCert(ctx context.Context, c *store.Cert) error {
	_, err := t.Q.ExecContext(ctx, `INSERT INTO agent_certs
		(cert_sha256, agent_id, serial, cert_pem, not_before, not_after, status, grace_until, created_at, retired_at, issued_seq)
		VALUES (?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, NULLIF(?, ''), (SELECT COALESCE(MAX(issued_seq), 0) + 1 FROM agent_certs))`,
		c.SHA256, c.AgentID, c.Serial, c.ChainPEM, formatTime(c.NotBefore), formatTime(c.NotAfter), c.Status,
		formatOptTime(c.GraceUntil), formatTime(c.CreatedAt), formatOptTime(c.RetiredAt))
	if err != nil {
		return fmt.Errorf("inserting certificate %s: %w", c.SHA256, t.conflict(err))
	}
	return nil
}

// UpdateCert implements store.Tx.
func (t *Tx) UpdateCert(ctx context.Context, c *store.Cert) error {
	res, err := t.Q.ExecContext(ctx, `UPDATE agent_certs SET status = ?, grace_until = NULLIF(?, ''), retired_at = NULLIF(?, '')
		WHERE cert_sha256 = ?`, c.Status, formatOptTime(c.GraceUntil), formatOptTime(c.RetiredAt), c.SHA256)
	if err != nil {
		return fmt.Errorf("updating certificate %s: %w", c.SHA256, err)
	}
	return affected(res, "certificate "+c.SHA256)
}

// whereClause joins conditions with AND.
func whereClause(conds []string) string {
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// jsonList stores a list as a JSON array ([] for nil).
func jsonList(l []string) string {
	if l == nil {
		return "[]"
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(TimeFormat, s)
	return t
}

func parseOptTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	t := parseTime(s)
	return &t
}

func formatOptTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return formatTime(*t)
}
