package mastio

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// Principal is an authenticated request's agent: its identity (live, from
// the registry) and how it was authenticated.
type Principal struct {
	registry.Identity
	// Scope is what the credential grants: the token's scope, or the
	// agent's capabilities over mTLS.
	Scope  []string
	JKT    string // the DPoP key of a DPoP-bound token
	Method string // dpop, bearer or mtls
	Claims *token.Claims
	// Pin is the SHA-256 of the client certificate of the connection, if
	// it presented one: the request stops being served when that
	// certificate is revoked or rotated out.
	Pin *[32]byte
}

// Credential is what p was admitted with.
func (p *Principal) Credential() registry.Credential {
	return registry.Credential{AgentID: p.AgentID, Pin: p.Pin}
}

// HasScope reports whether p holds scope.
func (p *Principal) HasScope(scope string) bool {
	for _, s := range p.Scope {
		if s == scope {
			return true
		}
	}
	return false
}

// tlsPin returns the SHA-256 of the request's client certificate, or nil.
func tlsPin(r *http.Request) *[32]byte {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	return &sum
}

// AuthenticateToken checks the access token and DPoP proof of r.
func (m *Mastio) AuthenticateToken(r *http.Request) (*Principal, *Refusal) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 {
		return nil, &Refusal{Status: 401, Description: "an access token is required: Authorization: DPoP <token> with a DPoP proof", Reason: "missing_token"}
	}
	if len(values) > 1 {
		return nil, &Refusal{Status: 401, Code: "invalid_token", Description: "exactly one Authorization header is allowed", Reason: "invalid_token"}
	}
	scheme, tok, _ := strings.Cut(strings.TrimSpace(values[0]), " ")
	tok = strings.TrimSpace(tok)
	scheme = strings.ToLower(scheme)
	if scheme != "dpop" && scheme != "bearer" || tok == "" {
		return nil, &Refusal{Status: 401, Code: "invalid_token", Description: "use Authorization: DPoP <token>", Reason: "invalid_token"}
	}
	claims, verr := m.tokens.Verify(tok, token.Expect{Issuer: m.issuer, Audience: m.issuer, Leeway: 5 * time.Second})
	if verr != nil {
		return nil, &Refusal{Status: 401, Code: "invalid_token", Description: verr.Description, Reason: "invalid_token"}
	}
	p, ref := m.checkTokenUse(r, tok, scheme, claims)
	if ref != nil {
		// The token is ours and valid: the refusal names its agent.
		ref.AgentID = claims.Subject
		return nil, ref
	}
	return p, nil
}

// checkTokenUse checks how a valid token is presented: scheme, DPoP proof,
// certificate binding and that the agent is still active.
func (m *Mastio) checkTokenUse(r *http.Request, tok, scheme string, claims *token.Claims) (*Principal, *Refusal) {
	bound := claims.Cnf != nil && claims.Cnf.JKT != ""
	p := &Principal{Identity: registry.Identity{AgentID: claims.Subject, SPIFFEID: claims.SPIFFEID}, Scope: strings.Fields(claims.Scope),
		Claims: claims, Pin: tlsPin(r)}
	switch {
	case scheme == "bearer" && bound:
		return nil, &Refusal{Status: 401, Code: "invalid_token",
			Description: "this token is DPoP-bound: present it with Authorization: DPoP and a DPoP proof, not as Bearer", Reason: "bearer_downgrade"}
	case scheme == "dpop" && !bound:
		return nil, &Refusal{Status: 401, Code: "invalid_token", Description: "this token is not DPoP-bound (no cnf.jkt)", Reason: "unbound_token"}
	case scheme == "bearer" && !m.cfg.AllowBearerTokens:
		return nil, &Refusal{Status: 401, Code: "invalid_token", Description: "bearer tokens are not accepted here: use a DPoP-bound token", Reason: "bearer_refused"}
	case bound:
		proof, perr := dpop.Verify(r.Context(), r.Header.Values("DPoP"), m.ProofChecks(r, tok))
		if perr != nil {
			return nil, m.ProofRefusal(r, perr)
		}
		if proof.JKT != claims.Cnf.JKT {
			return nil, &Refusal{Status: 401, Code: "invalid_dpop_proof",
				Description: "the proof is signed by another key than the one the token is bound to (cnf.jkt)", Reason: "jkt_mismatch"}
		}
		p.JKT, p.Method = proof.JKT, "dpop"
	default:
		p.Method = "bearer"
	}
	var tlsLeaf []byte
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		tlsLeaf = r.TLS.PeerCertificates[0].Raw
	}
	if claims.Cnf != nil && claims.Cnf.X5T != "" {
		if tlsLeaf == nil || jwt.CertThumbprint(tlsLeaf) != claims.Cnf.X5T {
			return nil, &Refusal{Status: 401, Code: "invalid_token",
				Description: "this token is bound to a client certificate (cnf.x5t#S256) that this connection does not present", Reason: "cert_mismatch"}
		}
	}
	if tlsLeaf != nil {
		tlsID, cerr := m.AgentFromTLS(r)
		if cerr != nil {
			return nil, &Refusal{Status: 401, Code: "invalid_token", Description: cerr.Message, Reason: cerr.Code}
		}
		if tlsID.AgentID != claims.Subject {
			return nil, &Refusal{Status: 401, Code: "invalid_token", Description: "the client certificate belongs to another agent than the token",
				Reason: "cert_agent_mismatch"}
		}
	}
	id, active := m.registry.Lookup(claims.Subject)
	if !active {
		return nil, &Refusal{Status: 401, Code: "invalid_token", Description: "the agent " + claims.Subject + " has been revoked", Reason: "agent_revoked"}
	}
	p.Identity = id
	return p, nil
}

// AuthenticateCertificate admits the caller by its client certificate
// alone (pinned to an active agent).
func (m *Mastio) AuthenticateCertificate(r *http.Request) (*Principal, *Refusal) {
	id, cerr := m.AgentFromTLS(r)
	if cerr != nil {
		return nil, CertificateRefusal(cerr)
	}
	return &Principal{Identity: id, Scope: id.Capabilities, Method: "mtls", Pin: tlsPin(r)}, nil
}

// CertificateRefusal is the refusal of a client certificate: no
// WWW-Authenticate challenge, and the agent named when the certificate is
// a known agent's (revoked or rotated out), so that it is audited.
func CertificateRefusal(cerr *registry.CheckError) *Refusal {
	return &Refusal{Status: 401, Code: cerr.Code, Description: cerr.Message, Reason: cerr.Code, NoChallenge: true, AgentID: cerr.AgentID}
}

// Denial codes for certificate-bound routes, beyond the registry's.
const (
	DenyCertRequired  = "client_cert_required"
	DenyCertUntrusted = "client_cert_untrusted"
)

// VerifyChain checks that leaf (with the intermediates the client sent)
// chains to the Org root for client authentication. The TLS layer does
// this already in verify modes; this covers the modes that do not verify.
func (m *Mastio) VerifyChain(leaf *x509.Certificate, sent []*x509.Certificate) error {
	inter := m.ca.IntermediatePool()
	for _, c := range sent {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: m.ca.RootPool(), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// AgentFromTLS returns the agent identity of the client certificate of the
// request's connection. Identity comes only from the TLS connection —
// never from a header — and is checked against the live pin view on every
// call, because keep-alive and HTTP/2 connections outlive a revocation.
func (m *Mastio) AgentFromTLS(r *http.Request) (registry.Identity, *registry.CheckError) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return registry.Identity{}, &registry.CheckError{Code: DenyCertRequired,
			Message: "A client certificate issued by this Mastio is required for this route"}
	}
	leaf := r.TLS.PeerCertificates[0]
	if len(r.TLS.VerifiedChains) == 0 {
		if err := m.VerifyChain(leaf, r.TLS.PeerCertificates[1:]); err != nil {
			return registry.Identity{}, &registry.CheckError{Code: DenyCertUntrusted,
				Message: "The client certificate was not issued by this Mastio's Org CA"}
		}
	}
	return m.registry.CheckDER(leaf.Raw)
}

// ProofChecks are the DPoP checks for r (with the access token, if any).
func (m *Mastio) ProofChecks(r *http.Request, accessToken string) dpop.Checks {
	return dpop.Checks{Method: r.Method, URL: m.RequestURL(r), AccessToken: accessToken, MaxAge: m.cfg.IATWindow,
		MaxSkew: m.cfg.ClockSkew, Nonces: m.nonces, NonceMode: m.cfg.NonceMode, Replay: m.replay}
}

// ProofRefusal turns a refused proof into a refusal; an htu mismatch is
// logged with both values (the runbook promises them) and carries the
// hint the original SDK reads.
func (m *Mastio) ProofRefusal(r *http.Request, perr *dpop.Error) *Refusal {
	if perr.Code == dpop.CodeReplayUnavailable {
		return &Refusal{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", Description: perr.Description,
			Reason: perr.Code, NoChallenge: true}
	}
	reason, hint := perr.Code, ""
	if strings.HasPrefix(perr.Description, "htu mismatch") {
		reason, hint = "htu_mismatch", "htu_mismatch_check_proxy_public_url"
		m.log.Info("dpop htu mismatch", zap.String("expected_htu", m.RequestURL(r)), zap.String("detail", perr.Description),
			zap.String("public_url", m.PublicURL()))
	}
	return &Refusal{Status: http.StatusUnauthorized, Code: perr.Code, Description: perr.Description, Reason: reason, CullisHint: hint}
}

// credentialHeaders are removed from a request once its caller is known:
// the agent's own credentials, so they never reach an upstream, and the
// headers older proxies used to claim a client identity, so an upstream
// cannot be fooled by a caller that sets them.
var credentialHeaders = []string{"Authorization", "DPoP", "X-SSL-Client-Cert", "X-SSL-Client-Verify", "X-SSL-Client-S-DN",
	"X-Client-Cert", "X-Forwarded-Client-Cert"}

// Identity headers: whatever a caller sent under these names is removed,
// then X-Agent-Id and X-Agent-Spiffe-Id are set from the verified
// identity, in every mode, so an upstream reading them reads what the
// Mastio verified. Any X-Mastio-* or X-Cullis-* header is removed too (the
// original Mastio's prefix, and ours for headers an operator sets from
// {mastio.*} placeholders).
var (
	identityHeaders        = []string{"X-Agent-Id", "X-Agent-Spiffe-Id", "X-Agent-Jkt", "X-Agent-Scope", "X-Agent-Capabilities", "X-Agent-Groups"}
	identityHeaderPrefixes = []string{"X-Mastio-", "X-Cullis-"}
)

// setIdentityHeaders replaces every identity header of r by the verified
// identity p.
func setIdentityHeaders(r *http.Request, p *Principal) {
	for _, hdr := range credentialHeaders {
		r.Header.Del(hdr)
	}
	for _, hdr := range identityHeaders {
		r.Header.Del(hdr)
	}
	for name := range r.Header {
		for _, prefix := range identityHeaderPrefixes {
			if strings.HasPrefix(name, prefix) {
				delete(r.Header, name)
			}
		}
	}
	r.Header.Set("X-Agent-Id", p.AgentID)
	if p.SPIFFEID != "" {
		r.Header.Set("X-Agent-Spiffe-Id", p.SPIFFEID)
	}
}

// Admit is what every surface does with an authenticated agent before
// serving it: count it, set the identity headers, hand token callers the
// current DPoP nonce, and track the request so that revoking or rotating
// out its credentials ends it (its context is cancelled). The caller
// serves the returned request and calls done when it returns.
func (m *Mastio) Admit(w http.ResponseWriter, r *http.Request, p *Principal) (*http.Request, func()) {
	authCounter.WithLabelValues("success", p.Method).Inc()
	m.LogDecision(r, "request admitted", Decision{Kind: KindAuth, Allow: true, Reason: p.Method, AgentID: p.AgentID, JKT: p.JKT})
	setIdentityHeaders(r, p)
	if n := m.Nonce(); n != "" && p.Method == "dpop" {
		w.Header().Set("DPoP-Nonce", n)
	}
	ctx, done := m.inflight.track(context.WithValue(r.Context(), principalKey{}, p), p.Credential())
	return r.WithContext(ctx), done
}

// Refuse counts, logs and answers a refused request; a refusal that names
// an agent is audited (auth.refused), others are logged with sampling.
func (m *Mastio) Refuse(w http.ResponseWriter, r *http.Request, ref *Refusal) {
	m.noteRefusal(r, ref, KindAuth, "request refused")
	m.writeRefusal(w, r, ref)
}

// noteRefusal counts and logs a refusal, and audits it when it names an
// agent (a nonce challenge excepted).
func (m *Mastio) noteRefusal(r *http.Request, ref *Refusal, kind, msg string) {
	authCounter.WithLabelValues("deny", ref.Reason).Inc()
	fields := []zap.Field{zap.String("error", ref.Description), zap.String("method", r.Method), zap.String("uri", r.RequestURI)}
	if pin := tlsPin(r); pin != nil {
		fields = append(fields, zap.String("cert_sha256", hex.EncodeToString(pin[:])))
	}
	// A nonce challenge (RFC 9449 §8) is a step of the protocol, not a
	// decision against the agent: it is not audited, nor logged as one.
	if ref.AgentID != "" && ref.Code != "use_dpop_nonce" {
		m.LogDecision(r, msg, Decision{Kind: kind, Reason: ref.Reason, AgentID: ref.AgentID, JKT: ref.JKT, Fields: fields})
		m.AuditRefusal(r, "auth.refused", ref.AgentID, ref.Status, ref.Reason, ref.Description, nil)
	} else {
		m.LogDecision(r, msg, Decision{Kind: kind, Reason: ref.Reason, JKT: ref.JKT, Fields: fields})
	}
}

// AgentRequest is a request of an authenticated agent.
type AgentRequest struct {
	R         *http.Request // with the tracked context
	Principal *Principal
	Done      func()
}

// AuthenticateAgent authenticates a surface's own caller by DPoP-bound
// token, or takes the agent a guard in front already admitted (mastio_auth).
// ok is false after the refusal was answered; the caller serves ar.R and
// calls ar.Done when it returns.
func (m *Mastio) AuthenticateAgent(w http.ResponseWriter, r *http.Request) (ar AgentRequest, ok bool) {
	ar.R, ar.Done = r, func() {}
	ar.Principal = PrincipalFrom(r)
	if ar.Principal == nil {
		var ref *Refusal
		if ar.Principal, ref = m.AuthenticateToken(r); ref != nil {
			m.Refuse(w, r, ref)
			return ar, false
		}
		ar.R, ar.Done = m.Admit(w, r, ar.Principal)
	}
	id, active := m.registry.Lookup(ar.Principal.AgentID)
	if !active { // revoked since the token was checked
		ar.Done()
		m.Refuse(w, r, &Refusal{Status: 401, Code: "invalid_token", Description: "the agent has been revoked", Reason: "agent_revoked",
			AgentID: ar.Principal.AgentID})
		return ar, false
	}
	ar.Principal.Identity.Capabilities, ar.Principal.Identity.Groups = id.Capabilities, id.Groups // decide on the live view
	return ar, true
}

type principalKey struct{}

// PrincipalFrom returns the agent a guard admitted for r, if any.
func PrincipalFrom(r *http.Request) *Principal {
	p, _ := r.Context().Value(principalKey{}).(*Principal)
	return p
}
