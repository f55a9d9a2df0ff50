package caddymastio

import (
	"crypto/x509"
	"net"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// clientIP is the caller's address as Caddy determined it (honouring the
// server's trusted_proxies), else the TCP peer.
func clientIP(r *http.Request) string {
	if v, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && v != "" {
		return v
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// Denial codes for certificate-bound routes, beyond the registry's.
const (
	denyCertRequired  = "client_cert_required"
	denyCertUntrusted = "client_cert_untrusted"
)

// verifyChain checks that leaf (with the intermediates the client sent)
// chains to the Org root for client authentication. The TLS layer does this
// already in verify modes; this covers the modes that do not verify.
func (a *App) verifyChain(leaf *x509.Certificate, sent []*x509.Certificate) error {
	inter := a.CA().IntermediatePool()
	for _, c := range sent {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{Roots: a.CA().RootPool(), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// AgentFromTLS returns the agent identity of the client certificate of the
// request's connection. Identity comes only from the TLS connection —
// never from a header — and is checked against the live pin view on every
// call, because keep-alive and HTTP/2 connections outlive a revocation.
func (a *App) AgentFromTLS(r *http.Request) (registry.Identity, *registry.CheckError) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return registry.Identity{}, &registry.CheckError{Code: denyCertRequired,
			Message: "A client certificate issued by this Mastio is required for this route"}
	}
	leaf := r.TLS.PeerCertificates[0]
	if len(r.TLS.VerifiedChains) == 0 {
		if err := a.verifyChain(leaf, r.TLS.PeerCertificates[1:]); err != nil {
			return registry.Identity{}, &registry.CheckError{Code: denyCertUntrusted,
				Message: "The client certificate was not issued by this Mastio's Org CA"}
		}
	}
	return a.state.registry.CheckDER(leaf.Raw)
}

// requireAgent runs the certificate gate and writes the 401 itself when it
// fails (returning ok=false).
func (h *Handler) requireAgent(w http.ResponseWriter, r *http.Request) (registry.Identity, bool) {
	id, cerr := h.app.AgentFromTLS(r)
	if cerr == nil {
		return id, true
	}
	fields := []zap.Field{zap.String("reason", cerr.Code), zap.String("remote_ip", clientIP(r)),
		zap.String("method", r.Method), zap.String("path", r.URL.Path)}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		fields = append(fields, zap.String("cert_sha256", certHex(r.TLS.PeerCertificates[0])))
	}
	if cerr.AgentID != "" { // a known agent's certificate, revoked or rotated out: audited
		h.logger.Info("client certificate refused", append(fields, zap.String("agent_id", cerr.AgentID))...)
		h.app.auditRefusal(r, "auth.refused", cerr.AgentID, http.StatusUnauthorized, cerr.Code, cerr.Message, nil)
	} else {
		h.app.refusalLog.Info("client certificate refused", fields...)
	}
	httpjson.WriteProblem(w, &httpjson.Problem{Status: http.StatusUnauthorized, Code: cerr.Code, Reason: cerr.Code,
		Message: cerr.Message, Hint: hintFor(cerr.Code)})
	return registry.Identity{}, false
}

func hintFor(code string) string {
	switch code {
	case denyCertRequired:
		return "present the agent certificate (and key) from enrollment at the TLS handshake; open a new connection after enrolling"
	case registry.DenyRevoked:
		return "this agent was revoked by an administrator; an administrator reactivates it by issuing it new material " +
			"(POST /v1/admin/agents/{id}/rotate-cert, runbook section 6): its old certificates stay dead"
	case registry.DenyNotPinned:
		return "use the most recent certificate issued to this agent"
	case denyCertUntrusted:
		return "the certificate must chain to this Mastio's Org CA (GET /pki/ca.crt)"
	}
	return ""
}
