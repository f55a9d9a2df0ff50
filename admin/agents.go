package admin

import (
	"context"
	"crypto"
	"encoding/json"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// AgentList is the answer to GET /v1/admin/agents.
type AgentList struct {
	Agents []*registry.Agent `json:"agents"`
	Count  int               `json:"count"`
}

// ListAgents lists the agents with status ("" for all).
func (a *API) ListAgents(ctx context.Context, status string) (*AgentList, error) {
	agents, err := a.m.Registry().ListAgents(ctx, status)
	if err != nil {
		return nil, err
	}
	if agents == nil {
		agents = []*registry.Agent{}
	}
	return &AgentList{Agents: agents, Count: len(agents)}, nil
}

// Agent returns one agent by id or bare name.
func (a *API) Agent(ctx context.Context, rawID string) (*registry.Agent, error) {
	id, err := a.agentID(rawID)
	if err != nil {
		return nil, err
	}
	return a.m.Registry().GetAgent(ctx, id)
}

// KeyInput is the optional key material of create and rotate requests:
// without it the Mastio generates a key and returns it once.
type KeyInput struct {
	PublicKeyPEM string `json:"public_key_pem,omitempty"`
	CSRPEM       string `json:"csr_pem,omitempty"`
}

func (k KeyInput) publicKey() (crypto.PublicKey, error) {
	switch {
	case k.PublicKeyPEM != "" && k.CSRPEM != "":
		return nil, invalid("csr_pem", "give public_key_pem or csr_pem, not both")
	case k.PublicKeyPEM != "":
		pub, _, err := registry.ParsePublicKeyPEM(k.PublicKeyPEM)
		if err != nil {
			return nil, invalid("public_key_pem", "public_key_pem: %s", err)
		}
		return pub, nil
	case k.CSRPEM != "":
		pub, err := registry.ParseCSRPEM(k.CSRPEM)
		if err != nil {
			return nil, invalid("csr_pem", "csr_pem: %s", err)
		}
		return pub, nil
	}
	return nil, nil
}

// Issued is the answer to create and rotate: the new certificate, and the
// private key when the Mastio generated it (shown once, never stored).
type Issued struct {
	AgentID       string          `json:"agent_id"`
	SPIFFEID      string          `json:"spiffe_id"`
	CertPEM       string          `json:"cert_pem"`
	CertSHA256    string          `json:"cert_sha256"`
	NotAfter      time.Time       `json:"not_after"`
	PrivateKeyPEM string          `json:"private_key_pem,omitempty"`
	Note          string          `json:"note,omitempty"`
	Agent         *registry.Agent `json:"agent"`
}

func issued(iss *registry.Issued) *Issued {
	resp := &Issued{AgentID: iss.Agent.AgentID, SPIFFEID: iss.Agent.SPIFFEID, CertPEM: iss.CertPEM,
		NotAfter: iss.Cert.NotAfter, PrivateKeyPEM: iss.KeyPEM, Agent: iss.Agent}
	if len(iss.Agent.Certificates) > 0 {
		resp.CertSHA256 = iss.Agent.Certificates[0].SHA256
	}
	if iss.KeyPEM != "" {
		resp.Note = "private_key_pem is shown once and not stored by the Mastio: keep it now"
	}
	return resp
}

// CreateAgentRequest is the body of POST /v1/admin/agents.
type CreateAgentRequest struct {
	AgentName    string          `json:"agent_name"`
	DisplayName  string          `json:"display_name"`
	Capabilities []string        `json:"capabilities"`
	Groups       []string        `json:"groups"`
	DPoPJWK      json.RawMessage `json:"dpop_jwk"`
	KeyInput
}

// CreateAgent registers an agent and issues its first certificate.
func (a *API) CreateAgent(ctx context.Context, c Caller, req CreateAgentRequest) (*Issued, error) {
	if req.AgentName == "" {
		return nil, invalid("agent_name", "agent_name is required")
	}
	name, err := a.m.Registry().ResolveAgentName("agent_name", req.AgentName)
	if err != nil {
		return nil, err
	}
	pub, err := req.publicKey()
	if err != nil {
		return nil, err
	}
	jkt := ""
	if len(req.DPoPJWK) > 0 && string(req.DPoPJWK) != "null" {
		if jkt, err = registry.JWKThumbprint(req.DPoPJWK); err != nil {
			return nil, invalid("dpop_jwk", "dpop_jwk: %s", err)
		}
	}
	iss, err := a.m.CreateAgent(ctx, registry.NewAgent{
		Name: name, DisplayName: req.DisplayName, Capabilities: req.Capabilities, Groups: req.Groups,
		PublicKey: pub, DPoPJKT: jkt, Method: "admin", Actor: c.Actor, AuditDetails: c.details()})
	if err != nil {
		return nil, err
	}
	return issued(iss), nil
}

// RevokeRequest is the (optional) body of a revocation.
type RevokeRequest struct {
	Reason string `json:"reason"`
}

// Revoked is the answer to a revocation.
type Revoked struct {
	AgentID   string          `json:"agent_id"`
	Status    string          `json:"status"`
	RevokedAt *time.Time      `json:"revoked_at"`
	Reason    string          `json:"reason"`
	Agent     *registry.Agent `json:"agent"`
}

// Revoke revokes an agent: its certificates and tokens stop working at
// once, on open connections too.
func (a *API) Revoke(ctx context.Context, c Caller, rawID string, req RevokeRequest) (*Revoked, error) {
	id, err := a.agentID(rawID)
	if err != nil {
		return nil, err
	}
	agent, err := a.m.Registry().Revoke(ctx, id, req.Reason, c.Actor, c.details())
	if err != nil {
		return nil, err
	}
	a.log.Info("agent revoked", zap.String("agent_id", id), zap.String("reason", agent.RevokedReason))
	return &Revoked{AgentID: id, Status: agent.Status, RevokedAt: agent.RevokedAt, Reason: agent.RevokedReason, Agent: agent}, nil
}

// RotateCertRequest is the (optional) body of a certificate rotation.
type RotateCertRequest struct {
	// GraceSeconds the old certificate stays valid (0: none).
	GraceSeconds int64 `json:"grace_seconds"`
	KeyInput
}

// RotateCert issues an agent a new certificate; a revoked agent is
// reactivated, its old certificates staying dead.
func (a *API) RotateCert(ctx context.Context, c Caller, rawID string, req RotateCertRequest) (*Issued, error) {
	id, err := a.agentID(rawID)
	if err != nil {
		return nil, err
	}
	pub, err := req.publicKey()
	if err != nil {
		return nil, err
	}
	if maxGrace := int64(registry.MaxGrace / time.Second); req.GraceSeconds < 0 || req.GraceSeconds > maxGrace {
		return nil, invalid("grace_seconds", "grace_seconds must be between 0 and %d", maxGrace)
	}
	iss, err := a.m.RotateCert(ctx, id, registry.Rotation{
		PublicKey: pub, Grace: time.Duration(req.GraceSeconds) * time.Second, Actor: c.Actor, Details: c.details()})
	if err != nil {
		return nil, err
	}
	a.log.Info("agent certificate rotated", zap.String("agent_id", id), zap.Int64("grace_seconds", req.GraceSeconds))
	return issued(iss), nil
}

// DPoPKeyRequest is the body of POST /v1/admin/agents/{id}/dpop-jwk.
type DPoPKeyRequest struct {
	DPoPJWK json.RawMessage `json:"dpop_jwk"`
}

// DPoPKeySet is the answer to it.
type DPoPKeySet struct {
	AgentID string          `json:"agent_id"`
	DPoPJKT string          `json:"dpop_jkt"`
	Agent   *registry.Agent `json:"agent"`
}

// SetDPoPKey registers the agent's DPoP public key.
func (a *API) SetDPoPKey(ctx context.Context, c Caller, rawID string, req DPoPKeyRequest) (*DPoPKeySet, error) {
	if len(req.DPoPJWK) == 0 || string(req.DPoPJWK) == "null" {
		return nil, invalid("dpop_jwk", "dpop_jwk is required")
	}
	id, err := a.agentID(rawID)
	if err != nil {
		return nil, err
	}
	agent, err := a.m.Registry().SetDPoPKey(ctx, id, req.DPoPJWK, c.Actor, c.details())
	if err != nil {
		return nil, err
	}
	return &DPoPKeySet{AgentID: id, DPoPJKT: agent.DPoPJKT, Agent: agent}, nil
}

// RotateSigningKeyRequest is the (optional) body of POST
// /v1/admin/keys/rotate.
type RotateSigningKeyRequest struct {
	// GraceSeconds the old key keeps verifying (0: 24 hours).
	GraceSeconds int64 `json:"grace_seconds"`
}

// maxSigningKeyGrace bounds how long a retired signing key verifies.
const maxSigningKeyGrace = 90 * 24 * time.Hour

// RotateSigningKey rotates the access-token signing key.
func (a *API) RotateSigningKey(ctx context.Context, c Caller, req RotateSigningKeyRequest) (*token.Rotation, error) {
	if req.GraceSeconds < 0 || req.GraceSeconds > int64(maxSigningKeyGrace/time.Second) {
		return nil, invalid("grace_seconds", "grace_seconds must be between 0 (default: 24h) and %d (90 days)",
			int64(maxSigningKeyGrace/time.Second))
	}
	rot, err := a.m.RotateSigningKey(ctx, time.Duration(req.GraceSeconds)*time.Second, c.details())
	if err != nil {
		return nil, err
	}
	a.log.Info("signing key rotated", zap.Any("rotation", rot))
	return rot, nil
}
