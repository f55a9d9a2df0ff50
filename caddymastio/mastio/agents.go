package mastio

import (
	"context"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// The registry operations that issue certificates, under this
// configuration's issuance settings. The others (revoke, reject, set a
// DPoP key, list and read) are the registry's own: m.Registry().

// CreateAgent registers an agent and issues its first certificate.
func (m *Mastio) CreateAgent(ctx context.Context, na registry.NewAgent) (*registry.Issued, error) {
	return m.registry.CreateAgent(ctx, m.issuance(), na)
}

// RotateCert issues an agent a new certificate (reactivating a revoked
// one), the old one valid for the grace period.
func (m *Mastio) RotateCert(ctx context.Context, agentID string, rot registry.Rotation) (*registry.Issued, error) {
	return m.registry.RotateCert(ctx, m.issuance(), agentID, rot)
}

// StartEnrollment opens an enrollment session.
func (m *Mastio) StartEnrollment(ctx context.Context, req registry.EnrollmentRequest) (*registry.Enrollment, error) {
	return m.registry.StartEnrollment(ctx, m.issuance(), req)
}

// Approve approves an enrollment session: the agent is created and its
// certificate issued.
func (m *Mastio) Approve(ctx context.Context, sid string, ap registry.Approval) (*registry.Enrollment, *registry.Agent, error) {
	return m.registry.Approve(ctx, m.issuance(), sid, ap)
}
