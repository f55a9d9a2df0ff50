package caddymastio

import (
	"crypto/x509"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
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
	m *mastio.Mastio
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
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	v.m = app.(*App).Mastio()
	return nil
}

// VerifyClientCertificate implements caddytls.ClientCertificateVerifier.
func (v *Verifier) VerifyClientCertificate(rawCerts [][]byte, verifiedChains [][]*x509.Certificate) error {
	return v.m.CheckHandshakeCert(rawCerts, len(verifiedChains) > 0)
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
