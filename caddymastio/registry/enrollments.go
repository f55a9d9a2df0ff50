package registry

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Enrollment statuses.
const (
	EnrollPending  = "pending"
	EnrollApproved = "approved"
	EnrollRejected = "rejected"
	EnrollExpired  = "expired"
)

// DefaultEnrollmentTTL is how long a session waits for a decision.
const DefaultEnrollmentTTL = 30 * time.Minute

// Enrollment is an enrollment session.
type Enrollment struct {
	SessionID       string     `json:"session_id"`
	Status          string     `json:"status"`
	PublicKeySHA256 string     `json:"pubkey_sha256"`
	RequesterName   string     `json:"requester_name"`
	RequesterEmail  string     `json:"requester_email"`
	Reason          string     `json:"reason"`
	DeviceInfo      string     `json:"device_info"`
	DPoPJKT         string     `json:"dpop_jkt,omitempty"`
	RemoteIP        string     `json:"remote_ip"`
	CreatedAt       time.Time  `json:"created_at"`
	ExpiresAt       time.Time  `json:"expires_at"`
	DecidedAt       *time.Time `json:"decided_at,omitempty"`
	DecidedBy       string     `json:"decided_by,omitempty"`
	AgentID         string     `json:"agent_id,omitempty"`
	Capabilities    []string   `json:"capabilities,omitempty"`
	Groups          []string   `json:"groups,omitempty"`
	RejectionReason string     `json:"rejection_reason,omitempty"`

	certPEM   string
	publicKey string
}

// CertPEM is the issued chain (leaf, intermediate) of an approved session.
func (e *Enrollment) CertPEM() string { return e.certPEM }

// EnrollmentRequest is what an agent sends to start enrolling.
type EnrollmentRequest struct {
	PublicKeyPEM   string
	RequesterName  string
	RequesterEmail string
	Reason         string
	DeviceInfo     string
	DPoPJWK        json.RawMessage
	PoPSignature   string
	RemoteIP       string
}

// StartEnrollment verifies the request (including the proof that the
// caller holds the private key) and opens a pending session.
func (r *Registry) StartEnrollment(ctx context.Context, p Policy, req EnrollmentRequest) (*Enrollment, error) {
	if n := len(req.PublicKeyPEM); n < 100 || n > 8192 {
		return nil, fieldError("pubkey_pem", "must be 100-8192 characters of PEM")
	}
	pub, spki, err := ParsePublicKeyPEM(req.PublicKeyPEM)
	if err != nil {
		return nil, fieldError("pubkey_pem", "%v", err)
	}
	if n := len(strings.TrimSpace(req.RequesterName)); n < 1 || n > 200 {
		return nil, fieldError("requester_name", "must be 1-200 characters")
	}
	if n := len(req.RequesterEmail); n < 3 || n > 320 {
		return nil, fieldError("requester_email", "must be 3-320 characters")
	}
	if _, err := mail.ParseAddress(req.RequesterEmail); err != nil {
		return nil, fieldError("requester_email", "not an e-mail address")
	}
	if len(req.Reason) > 1000 {
		return nil, fieldError("reason", "at most 1000 characters")
	}
	if len(req.DeviceInfo) > 500 {
		return nil, fieldError("device_info", "at most 500 characters")
	}
	jkt := ""
	if len(req.DPoPJWK) > 0 && string(req.DPoPJWK) != "null" {
		if jkt, err = JWKThumbprint(req.DPoPJWK); err != nil {
			return nil, fieldError("dpop_jwk", "%v", err)
		}
	}
	if req.PoPSignature == "" || len(req.PoPSignature) > 2048 {
		return nil, fieldError("pop_signature", "required, at most 2048 characters")
	}
	if !VerifySignature(pub, PoPMessage(spki), req.PoPSignature) {
		return nil, &Error{Status: 400, Code: "invalid_pop_signature", Field: "pop_signature",
			Message: "pop_signature does not verify with pubkey_pem over \"enrollment-pop:v1|<hex sha256 of the SPKI DER>\""}
	}
	ttl := p.EnrollmentTTL
	if ttl <= 0 {
		ttl = DefaultEnrollmentTTL
	}
	sidBytes := make([]byte, 24)
	if _, err := rand.Read(sidBytes); err != nil {
		return nil, err
	}
	now := r.now()
	e := &Enrollment{
		SessionID:       base64.RawURLEncoding.EncodeToString(sidBytes),
		Status:          EnrollPending,
		PublicKeySHA256: SPKISHA256(spki),
		RequesterName:   strings.TrimSpace(req.RequesterName),
		RequesterEmail:  req.RequesterEmail,
		Reason:          req.Reason,
		DeviceInfo:      req.DeviceInfo,
		DPoPJKT:         jkt,
		RemoteIP:        req.RemoteIP,
		CreatedAt:       now,
		ExpiresAt:       now.Add(ttl),
		publicKey:       req.PublicKeyPEM,
	}
	err = r.withTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO enrollments
			(session_id, status, pubkey_pem, pubkey_sha256, requester_name, requester_email, reason, device_info,
			 dpop_jkt, remote_ip, created_at, expires_at)
			VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?, ?)`,
			e.SessionID, req.PublicKeyPEM, e.PublicKeySHA256, e.RequesterName, e.RequesterEmail, e.Reason,
			e.DeviceInfo, jkt, e.RemoteIP, store.FormatTime(now), store.FormatTime(e.ExpiresAt)); err != nil {
			return fmt.Errorf("inserting enrollment: %w", err)
		}
		_, err := r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "enrollment.started", Actor: "anonymous",
			Subject: e.SessionID, Details: map[string]any{
				"pubkey_sha256":   e.PublicKeySHA256,
				"requester_name":  e.RequesterName,
				"requester_email": e.RequesterEmail,
				"dpop_jkt":        jkt,
				"remote_ip":       req.RemoteIP,
				"expires_at":      e.ExpiresAt.Format(time.RFC3339),
			}})
		return err
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

const enrollmentColumns = `session_id, status, pubkey_pem, pubkey_sha256, requester_name, requester_email, reason, device_info,
	COALESCE(dpop_jkt, ''), remote_ip, created_at, expires_at, COALESCE(decided_at, ''), COALESCE(decided_by, ''),
	COALESCE(agent_id, ''), COALESCE(capabilities, '[]'), COALESCE(groups_json, '[]'), COALESCE(cert_pem, ''),
	COALESCE(rejection_reason, '')`

type scanner interface{ Scan(dest ...any) error }

func scanEnrollment(s scanner) (*Enrollment, error) {
	e := &Enrollment{}
	var created, expires, decided, caps, groups string
	if err := s.Scan(&e.SessionID, &e.Status, &e.publicKey, &e.PublicKeySHA256, &e.RequesterName, &e.RequesterEmail,
		&e.Reason, &e.DeviceInfo, &e.DPoPJKT, &e.RemoteIP, &created, &expires, &decided, &e.DecidedBy, &e.AgentID,
		&caps, &groups, &e.certPEM, &e.RejectionReason); err != nil {
		return nil, err
	}
	e.CreatedAt, _ = time.Parse(store.TimeFormat, created)
	e.ExpiresAt, _ = time.Parse(store.TimeFormat, expires)
	if decided != "" {
		t, _ := time.Parse(store.TimeFormat, decided)
		e.DecidedAt = &t
	}
	json.Unmarshal([]byte(caps), &e.Capabilities)
	json.Unmarshal([]byte(groups), &e.Groups)
	return e, nil
}

// Enrollment returns a session, expiring it first if its time is up.
func (r *Registry) Enrollment(ctx context.Context, sid string) (*Enrollment, error) {
	e, err := r.loadEnrollment(ctx, r.cfg.DB, sid)
	if err != nil {
		return nil, err
	}
	if e.Status == EnrollPending && !r.now().Before(e.ExpiresAt) {
		if err := r.expire(ctx, sid); err != nil {
			return nil, err
		}
		return r.loadEnrollment(ctx, r.cfg.DB, sid)
	}
	return e, nil
}

type rowQuerier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (r *Registry) loadEnrollment(ctx context.Context, q rowQuerier, sid string) (*Enrollment, error) {
	if sid == "" || len(sid) > 64 {
		return nil, errorf(404, "enrollment_not_found", "no enrollment session %q", sid)
	}
	e, err := scanEnrollment(q.QueryRowContext(ctx, `SELECT `+enrollmentColumns+` FROM enrollments WHERE session_id = ?`, sid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errorf(404, "enrollment_not_found", "no enrollment session %q", sid)
	}
	return e, err
}

// VerifyStatusProof checks an X-Enrollment-Proof header: the session key's
// signature over "enrollment-status:v1|<session_id>".
func (e *Enrollment) VerifyStatusProof(proof string) bool {
	if proof == "" || len(proof) > 2048 {
		return false
	}
	pub, _, err := ParsePublicKeyPEM(e.publicKey)
	if err != nil {
		return false
	}
	return VerifySignature(pub, StatusProofMessage(e.SessionID), proof)
}

// ListEnrollments lists sessions (status "" for all), newest first, after
// expiring overdue ones.
func (r *Registry) ListEnrollments(ctx context.Context, status string) ([]*Enrollment, error) {
	switch status {
	case "", EnrollPending, EnrollApproved, EnrollRejected, EnrollExpired:
	default:
		return nil, fieldError("status", "want pending, approved, rejected or expired")
	}
	if _, err := r.ExpireEnrollments(ctx); err != nil {
		return nil, err
	}
	q := `SELECT ` + enrollmentColumns + ` FROM enrollments`
	args := []any{}
	if status != "" {
		q += ` WHERE status = ?`
		args = append(args, status)
	}
	rows, err := r.cfg.DB.QueryContext(ctx, q+` ORDER BY created_at DESC LIMIT 1000`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*Enrollment{}
	for rows.Next() {
		e, err := scanEnrollment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// Approval is an administrator's decision to admit an enrolling agent.
type Approval struct {
	AgentName    string
	Capabilities []string
	Groups       []string
	Actor        string
	Details      map[string]any
}

// Approve issues the session's key a certificate and registers the agent.
func (r *Registry) Approve(ctx context.Context, p Policy, sid string, ap Approval) (*Enrollment, *Agent, error) {
	name, err := r.ResolveAgentName("agent_id", ap.AgentName)
	if err != nil {
		return nil, nil, err
	}
	ap.AgentName = name
	e, err := r.Enrollment(ctx, sid)
	if err != nil {
		return nil, nil, err
	}
	if e.Status != EnrollPending {
		return nil, nil, errorf(409, "enrollment_not_pending", "Cannot approve an enrollment in status '%s'", e.Status)
	}
	pub, _, err := ParsePublicKeyPEM(e.publicKey)
	if err != nil {
		return nil, nil, err
	}
	now := r.now()
	iss, err := r.createAgent(ctx, p, NewAgent{
		Name: ap.AgentName, DisplayName: e.RequesterName, Capabilities: ap.Capabilities, Groups: ap.Groups,
		PublicKey: pub, DPoPJKT: e.DPoPJKT, Method: "enrollment", Actor: ap.Actor,
		AuditDetails: mergeDetails(map[string]any{"session_id": sid}, ap.Details),
	}, func(tx *sql.Tx, iss *Issued) error {
		capsJSON, _ := json.Marshal(nonNil(ap.Capabilities))
		groupsJSON, _ := json.Marshal(nonNil(ap.Groups))
		res, err := tx.ExecContext(ctx, `UPDATE enrollments SET status = 'approved', decided_at = ?, decided_by = ?,
			agent_id = ?, capabilities = ?, groups_json = ?, cert_pem = ?
			WHERE session_id = ? AND status = 'pending'`,
			store.FormatTime(now), ap.Actor, r.AgentID(ap.AgentName), string(capsJSON), string(groupsJSON), iss.CertPEM, sid)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errorf(409, "enrollment_not_pending", "Cannot approve an enrollment that is no longer pending")
		}
		_, err = r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "enrollment.approved", Actor: ap.Actor, Subject: sid,
			Details: mergeDetails(map[string]any{"agent_id": r.AgentID(ap.AgentName), "pubkey_sha256": e.PublicKeySHA256,
				"cert_sha256": certSum(iss.Cert)}, ap.Details)})
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	e, err = r.loadEnrollment(ctx, r.cfg.DB, sid)
	return e, iss.Agent, err
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Reject closes a pending session without admitting the agent.
func (r *Registry) Reject(ctx context.Context, sid, reason, actor string, details map[string]any) (*Enrollment, error) {
	if len(reason) > 1000 {
		return nil, fieldError("reason", "at most 1000 characters")
	}
	e, err := r.Enrollment(ctx, sid)
	if err != nil {
		return nil, err
	}
	if e.Status != EnrollPending {
		return nil, errorf(409, "enrollment_not_pending", "Cannot reject an enrollment in status '%s'", e.Status)
	}
	err = r.withTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE enrollments SET status = 'rejected', decided_at = ?, decided_by = ?, rejection_reason = ?
			WHERE session_id = ? AND status = 'pending'`, store.FormatTime(r.now()), actor, reason, sid)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errorf(409, "enrollment_not_pending", "Cannot reject an enrollment that is no longer pending")
		}
		_, err = r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "enrollment.rejected", Actor: actor, Subject: sid,
			Details: mergeDetails(map[string]any{"reason": reason, "pubkey_sha256": e.PublicKeySHA256}, details)})
		return err
	})
	if err != nil {
		return nil, err
	}
	return r.loadEnrollment(ctx, r.cfg.DB, sid)
}

func (r *Registry) expire(ctx context.Context, sid string) error {
	return r.withTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE enrollments SET status = 'expired', decided_at = ?, decided_by = 'system'
			WHERE session_id = ? AND status = 'pending' AND expires_at <= ?`,
			store.FormatTime(r.now()), sid, store.FormatTime(r.now()))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil // someone else decided or expired it
		}
		_, err = r.cfg.Audit.AppendTx(ctx, tx, audit.Event{Type: "enrollment.expired", Actor: "system", Subject: sid})
		return err
	})
}

// ExpireEnrollments expires every overdue pending session (each audited).
func (r *Registry) ExpireEnrollments(ctx context.Context) (int, error) {
	rows, err := r.cfg.DB.QueryContext(ctx, `SELECT session_id FROM enrollments WHERE status = 'pending' AND expires_at <= ?`,
		store.FormatTime(r.now()))
	if err != nil {
		return 0, err
	}
	var sids []string
	for rows.Next() {
		var s string
		rows.Scan(&s)
		sids = append(sids, s)
	}
	rows.Close()
	for _, s := range sids {
		if err := r.expire(ctx, s); err != nil {
			return 0, err
		}
	}
	return len(sids), nil
}
