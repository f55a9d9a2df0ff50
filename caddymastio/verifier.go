package caddymastio

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Verifier{})
}

// Verifier checks, during the TLS handshake (resumed sessions included),
// that a presented client certificate chains to the Org CA and is pinned —
// by the SHA-256 of its DER — to an active agent; otherwise the handshake
// fails. A handshake without a certificate is no concern of the verifier:
// routes that need an identity refuse such requests themselves, so the
// same site can serve enrollment and health to anonymous clients.
//
// Use it with `client_auth { mode verify_if_given; trust_pool mastio;
// verifier mastio }`.
type Verifier struct {
	app    *App
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Verifier) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.client_auth.verifier.mastio",
		New: func() caddy.Module { return new(Verifier) },
	}
}

// Provision attaches the verifier to the mastio app.
func (v *Verifier) Provision(ctx caddy.Context) error {
	v.logger = ctx.Logger()
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	v.app = app.(*App)
	return nil
}

// VerifyClientCertificate implements caddytls.ClientCertificateVerifier.
func (v *Verifier) VerifyClientCertificate(rawCerts [][]byte, verifiedChains [][]*x509.Certificate) error {
	if len(rawCerts) == 0 {
		return nil
	}
	if err := v.app.ready(); err != nil {
		return fmt.Errorf("the Mastio's state cannot be opened: %w", err)
	}
	if len(verifiedChains) == 0 {
		// A mode that does not verify chains (request, require): do it here.
		certs := make([]*x509.Certificate, 0, len(rawCerts))
		for _, raw := range rawCerts {
			c, err := x509.ParseCertificate(raw)
			if err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			certs = append(certs, c)
		}
		if err := v.app.verifyChain(certs[0], certs[1:]); err != nil {
			v.app.refusalLog.Info("client certificate refused at handshake", zap.String("reason", denyCertUntrusted), zap.Error(err))
			return errors.New("client certificate is not issued by the Org CA")
		}
	}
	if _, cerr := v.app.Registry().CheckDER(rawCerts[0]); cerr != nil {
		if cerr.AgentID == "" { // a certificate of nobody we know: counted, sampled
			v.app.refusalLog.Info("client certificate refused at handshake", zap.String("reason", cerr.Code))
			return errors.New(cerr.Message)
		}
		v.logger.Info("client certificate refused at handshake", zap.String("reason", cerr.Code), zap.String("agent_id", cerr.AgentID))
		v.app.auditRefusalDetails(context.Background(), "auth.refused", cerr.AgentID, map[string]any{"stage": "tls_handshake",
			"reason": cerr.Code, "message": cerr.Message, "cert_sha256": fmt.Sprintf("%x", sha256.Sum256(rawCerts[0]))})
		return errors.New(cerr.Message)
	}
	return nil
}

// UnmarshalCaddyfile sets up the verifier from Caddyfile tokens. Syntax:
//
//	verifier mastio
func (v *Verifier) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume module name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("verifier mastio takes no options, got %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner                  = (*Verifier)(nil)
	_ caddytls.ClientCertificateVerifier = (*Verifier)(nil)
	_ caddyfile.Unmarshaler              = (*Verifier)(nil)
)
