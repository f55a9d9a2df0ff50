package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

const enrollmentColumns = `session_id, status, pubkey_pem, pubkey_sha256, requester_name, requester_email, reason, device_info,
	COALESCE(dpop_jkt, ''), remote_ip, created_at, expires_at, COALESCE(decided_at, ''), COALESCE(decided_by, ''),
	COALESCE(agent_id, ''), COALESCE(capabilities, '[]'), COALESCE(groups_json, '[]'), COALESCE(cert_pem, ''),
	COALESCE(rejection_reason, '')`

type scanner interface{ Scan(dest ...any) error }

func scanEnrollment(s scanner) (*store.Enrollment, error) {
	e := &store.Enrollment{}
	var created, expires, decided, caps, groups string
	if err := s.Scan(&e.SessionID, &e.Status, &e.PublicKeyPEM, &e.PublicKeySHA256, &e.RequesterName, &e.RequesterEmail,
		&e.Reason, &e.DeviceInfo, &e.DPoPJKT, &e.RemoteIP, &created, &expires, &decided, &e.DecidedBy, &e.AgentID,
		&caps, &groups, &e.CertPEM, &e.RejectionReason); err != nil {
		return nil, err
	}
	e.CreatedAt, e.ExpiresAt, e.DecidedAt = parseTime(created), parseTime(expires), parseOptTime(decided)
	json.Unmarshal([]byte(caps), &e.Capabilities)
	json.Unmarshal([]byte(groups), &e.Groups)
	return e, nil
}

// Enrollment implements store.Reader.
func (r Reader) Enrollment(ctx context.Context, sid string) (*store.Enrollment, error) {
	e, err := scanEnrollment(r.Q.QueryRowContext(ctx, `SELECT `+enrollmentColumns+` FROM enrollments WHERE session_id = ?`, sid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: enrollment session %q", store.ErrNotFound, sid)
	}
	return e, err
}

// Enrollments implements store.Reader.
func (r Reader) Enrollments(ctx context.Context, f store.EnrollmentFilter) ([]*store.Enrollment, error) {
	var where []string
	var args []any
	if f.Status != "" {
		where, args = append(where, "status = ?"), append(args, f.Status)
	}
	if !f.ExpiredBy.IsZero() {
		where, args = append(where, "status = 'pending' AND expires_at <= ?"), append(args, formatTime(f.ExpiredBy))
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	rows, err := r.Q.QueryContext(ctx, `SELECT `+enrollmentColumns+` FROM enrollments`+whereClause(where)+
		` ORDER BY created_at DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*store.Enrollment{}
	for rows.Next() {
		e, err := scanEnrollment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// InsertEnrollment implements store.Tx.
func (t *Tx) InsertEnrollment(ctx context.Context, e *store.Enrollment) error {
	_, err := t.Q.ExecContext(ctx, `INSERT INTO enrollments
		(session_id, status, pubkey_pem, pubkey_sha256, requester_name, requester_email, reason, device_info,
		 dpop_jkt, remote_ip, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), ?, ?, ?)`,
		e.SessionID, e.Status, e.PublicKeyPEM, e.PublicKeySHA256, e.RequesterName, e.RequesterEmail, e.Reason,
		e.DeviceInfo, e.DPoPJKT, e.RemoteIP, formatTime(e.CreatedAt), formatTime(e.ExpiresAt))
	if err != nil {
		return fmt.Errorf("inserting enrollment: %w", t.conflict(err))
	}
	return nil
}

// UpdateEnrollment implements store.Tx.
func (t *Tx) UpdateEnrollment(ctx context.Context, e *store.Enrollment) error {
	var caps, groups any // NULL until decided with them
	if e.Capabilities != nil || e.Status == store.EnrollApproved {
		caps = jsonList(e.Capabilities)
	}
	if e.Groups != nil || e.Status == store.EnrollApproved {
		groups = jsonList(e.Groups)
	}
	res, err := t.Q.ExecContext(ctx, `UPDATE enrollments SET status = ?, decided_at = NULLIF(?, ''), decided_by = NULLIF(?, ''),
		agent_id = NULLIF(?, ''), capabilities = ?, groups_json = ?, cert_pem = NULLIF(?, ''), rejection_reason = NULLIF(?, '')
		WHERE session_id = ?`,
		e.Status, formatOptTime(e.DecidedAt), e.DecidedBy, e.AgentID, caps, groups, e.CertPEM, e.RejectionReason, e.SessionID)
	if err != nil {
		return fmt.Errorf("updating enrollment: %w", err)
	}
	return affected(res, "enrollment session "+e.SessionID)
}
