package registry

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/mail"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Enrollment statuses.
const (
	EnrollPending  = store.EnrollPending
	EnrollApproved = store.EnrollApproved
	EnrollRejected = store.EnrollRejected
	EnrollExpired  = store.EnrollExpired
)

// DefaultEnrollmentTTL is how long a session waits for a decision.
const DefaultEnrollmentTTL = 30 * time.Minute

// Enrollment is an enrollment session.
type Enrollment = store.Enrollment

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
func (r *Registry) StartEnrollment(ctx context.Context, p Issuance, req EnrollmentRequest) (*Enrollment, error) {
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
	sid, err := newSessionID()
	if err != nil {
		return nil, err
	}
	now := r.now()
	e := &Enrollment{
		SessionID:       sid,
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
		PublicKeyPEM:    req.PublicKeyPEM,
	}
	err = r.change(ctx, func(c *audit.Change) error {
		if err := c.InsertEnrollment(ctx, e); err != nil {
			return err
		}
		c.Record(audit.Event{Type: "enrollment.started", Actor: "anonymous",
			Subject: e.SessionID, Details: map[string]any{
				"pubkey_sha256":   e.PublicKeySHA256,
				"requester_name":  e.RequesterName,
				"requester_email": e.RequesterEmail,
				"dpop_jkt":        jkt,
				"remote_ip":       req.RemoteIP,
				"expires_at":      e.ExpiresAt.Format(time.RFC3339),
			}})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return e, nil
}

// Enrollment returns a session, expiring it first if its time is up.
func (r *Registry) Enrollment(ctx context.Context, sid string) (*Enrollment, error) {
	e, err := r.loadEnrollment(ctx, r.cfg.Store, sid)
	if err != nil {
		return nil, err
	}
	if e.Status == EnrollPending && !r.now().Before(e.ExpiresAt) {
		if err := r.expire(ctx, sid); err != nil {
			return nil, err
		}
		return r.loadEnrollment(ctx, r.cfg.Store, sid)
	}
	return e, nil
}

// loadEnrollment reads a session through q (the store, or a change).
func (r *Registry) loadEnrollment(ctx context.Context, q store.Reader, sid string) (*Enrollment, error) {
	if sid == "" || len(sid) > 64 {
		return nil, errorf(404, "enrollment_not_found", "no enrollment session %q", sid)
	}
	e, err := q.Enrollment(ctx, sid)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(404, "enrollment_not_found", "no enrollment session %q", sid)
	}
	return e, err
}

// VerifyStatusProof checks an X-Enrollment-Proof header: the session key's
// signature over "enrollment-status:v1|<session_id>".
func VerifyStatusProof(e *Enrollment, proof string) bool {
	if proof == "" || len(proof) > 2048 {
		return false
	}
	pub, _, err := ParsePublicKeyPEM(e.PublicKeyPEM)
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
	return r.cfg.Store.Enrollments(ctx, store.EnrollmentFilter{Status: status})
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
func (r *Registry) Approve(ctx context.Context, p Issuance, sid string, ap Approval) (*Enrollment, *Agent, error) {
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
	pub, _, err := ParsePublicKeyPEM(e.PublicKeyPEM)
	if err != nil {
		return nil, nil, err
	}
	now := r.now()
	iss, err := r.createAgent(ctx, p, NewAgent{
		Name: ap.AgentName, DisplayName: e.RequesterName, Capabilities: ap.Capabilities, Groups: ap.Groups,
		PublicKey: pub, DPoPJKT: e.DPoPJKT, Method: "enrollment", Actor: ap.Actor,
		AuditDetails: mergeDetails(map[string]any{"session_id": sid}, ap.Details),
	}, func(c *audit.Change, iss *Issued) error {
		cur, err := r.loadEnrollment(ctx, c, sid)
		if err != nil {
			return err
		}
		if cur.Status != EnrollPending {
			return errorf(409, "enrollment_not_pending", "Cannot approve an enrollment that is no longer pending")
		}
		cur.Status, cur.DecidedAt, cur.DecidedBy = EnrollApproved, &now, ap.Actor
		cur.AgentID, cur.Capabilities, cur.Groups, cur.CertPEM = r.AgentID(ap.AgentName), nonNil(ap.Capabilities), nonNil(ap.Groups), iss.CertPEM
		if err := c.UpdateEnrollment(ctx, cur); err != nil {
			return err
		}
		c.Record(audit.Event{Type: "enrollment.approved", Actor: ap.Actor, Subject: sid,
			Details: mergeDetails(map[string]any{"agent_id": r.AgentID(ap.AgentName), "pubkey_sha256": e.PublicKeySHA256,
				"cert_sha256": certSum(iss.Cert)}, ap.Details)})
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	e, err = r.loadEnrollment(ctx, r.cfg.Store, sid)
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
	err = r.change(ctx, func(c *audit.Change) error {
		cur, err := r.loadEnrollment(ctx, c, sid)
		if err != nil {
			return err
		}
		if cur.Status != EnrollPending {
			return errorf(409, "enrollment_not_pending", "Cannot reject an enrollment that is no longer pending")
		}
		now := r.now()
		cur.Status, cur.DecidedAt, cur.DecidedBy, cur.RejectionReason = EnrollRejected, &now, actor, reason
		if err := c.UpdateEnrollment(ctx, cur); err != nil {
			return err
		}
		c.Record(audit.Event{Type: "enrollment.rejected", Actor: actor, Subject: sid,
			Details: mergeDetails(map[string]any{"reason": reason, "pubkey_sha256": e.PublicKeySHA256}, details)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return r.loadEnrollment(ctx, r.cfg.Store, sid)
}

// expire expires one overdue pending session; nothing happens if someone
// else decided or expired it meanwhile.
func (r *Registry) expire(ctx context.Context, sid string) error {
	return r.change(ctx, func(c *audit.Change) error {
		cur, err := r.loadEnrollment(ctx, c, sid)
		if err != nil {
			return err
		}
		now := r.now()
		if cur.Status != EnrollPending || now.Before(cur.ExpiresAt) {
			return nil
		}
		cur.Status, cur.DecidedAt, cur.DecidedBy = EnrollExpired, &now, "system"
		if err := c.UpdateEnrollment(ctx, cur); err != nil {
			return err
		}
		c.Record(audit.Event{Type: "enrollment.expired", Actor: "system", Subject: sid})
		return nil
	})
}

// ExpireEnrollments expires every overdue pending session (each audited).
func (r *Registry) ExpireEnrollments(ctx context.Context) (int, error) {
	overdue, err := r.cfg.Store.Enrollments(ctx, store.EnrollmentFilter{ExpiredBy: r.now()})
	if err != nil {
		return 0, err
	}
	for _, e := range overdue {
		if err := r.expire(ctx, e.SessionID); err != nil {
			return 0, err
		}
	}
	return len(overdue), nil
}

// newSessionID is a random session id (24 bytes, base64url) that does not
// start with "-", which command lines would take for a flag (caddy mastio
// enrollments approve <session>).
func newSessionID() (string, error) {
	b := make([]byte, 24)
	for {
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		if sid := base64.RawURLEncoding.EncodeToString(b); sid[0] != '-' {
			return sid, nil
		}
	}
}
