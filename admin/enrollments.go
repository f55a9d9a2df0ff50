package admin

import (
	"context"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// EnrollmentList is the answer to GET /v1/admin/enrollments.
type EnrollmentList struct {
	Enrollments []*registry.Enrollment `json:"enrollments"`
	Count       int                    `json:"count"`
}

// ListEnrollments lists the enrollment sessions with status ("" for all).
func (a *API) ListEnrollments(ctx context.Context, status string) (*EnrollmentList, error) {
	list, err := a.m.Registry().ListEnrollments(ctx, status)
	if err != nil {
		return nil, err
	}
	return &EnrollmentList{Enrollments: list, Count: len(list)}, nil
}

// ApproveRequest is the body of POST /v1/admin/enrollments/{sid}/approve:
// the agent's name and what it may do.
type ApproveRequest struct {
	AgentID      string   `json:"agent_id"`
	Capabilities []string `json:"capabilities"`
	Groups       []string `json:"groups"`
}

// Approved is the answer to an approval.
type Approved struct {
	SessionID string          `json:"session_id"`
	Status    string          `json:"status"`
	AgentID   string          `json:"agent_id"`
	Agent     *registry.Agent `json:"agent"`
}

// Approve approves an enrollment session: the agent is created and its
// certificate issued, for the agent to collect.
func (a *API) Approve(ctx context.Context, c Caller, sid string, req ApproveRequest) (*Approved, error) {
	if req.AgentID == "" {
		return nil, invalid("agent_id", "agent_id is required")
	}
	e, agent, err := a.m.Approve(ctx, sid, registry.Approval{
		AgentName: req.AgentID, Capabilities: req.Capabilities, Groups: req.Groups, Actor: c.Actor, Details: c.details()})
	if err != nil {
		return nil, err
	}
	a.m.LogDecisionContext(ctx, "enrollment approved", mastio.Decision{Kind: mastio.KindEnrollment, Allow: true, Reason: "approved",
		AgentID: e.AgentID, RemoteIP: c.RemoteIP, Fields: []zap.Field{zap.String("session_id", sid), zap.String("actor", c.Actor)}})
	return &Approved{SessionID: e.SessionID, Status: e.Status, AgentID: e.AgentID, Agent: agent}, nil
}

// RejectRequest is the (optional) body of a rejection: the reason the
// agent will see.
type RejectRequest struct {
	Reason string `json:"reason"`
}

// Rejected is the answer to a rejection.
type Rejected struct {
	SessionID       string `json:"session_id"`
	Status          string `json:"status"`
	RejectionReason string `json:"rejection_reason"`
}

// Reject rejects an enrollment session.
func (a *API) Reject(ctx context.Context, c Caller, sid string, req RejectRequest) (*Rejected, error) {
	e, err := a.m.Registry().Reject(ctx, sid, req.Reason, c.Actor, c.details())
	if err != nil {
		return nil, err
	}
	a.m.LogDecisionContext(ctx, "enrollment rejected", mastio.Decision{Kind: mastio.KindEnrollment, Reason: "rejected",
		RemoteIP: c.RemoteIP, Fields: []zap.Field{zap.String("session_id", sid), zap.String("actor", c.Actor),
			zap.String("rejection_reason", e.RejectionReason)}})
	return &Rejected{SessionID: e.SessionID, Status: e.Status, RejectionReason: e.RejectionReason}, nil
}
