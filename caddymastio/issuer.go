package caddymastio

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

func init() {
	caddy.RegisterModule(Issuer{})
}

// Issuer issues TLS server certificates signed by the Org CA's
// intermediate, so the gateway's own names get certificates agents already
// trust (they pin the Org root). Certmagic stores and renews them like any
// other issuer's — by default when a third of the lifetime is left — so no
// manual re-minting is ever needed, and deleting the stored certificate
// simply makes the next start issue a new one. Every issuance is audited
// (pki.server_cert_issued).
//
// A site uses it with `tls { issuer mastio }`; sites without it keep
// Caddy's default ACME issuers, so public names can use Let's Encrypt in
// the same process.
type Issuer struct {
	// Validity of issued certificates. Default: 365d. A certificate never
	// outlives the intermediate that signs it.
	Lifetime caddy.Duration `json:"lifetime,omitempty"`

	m *mastio.Mastio
}

// CaddyModule returns the Caddy module information.
func (Issuer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.issuance.mastio",
		New: func() caddy.Module { return new(Issuer) },
	}
}

// Provision attaches the issuer to the mastio app.
func (iss *Issuer) Provision(ctx caddy.Context) error {
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	iss.m = app.(*App).Mastio()
	if iss.Lifetime == 0 {
		iss.Lifetime = caddy.Duration(pki.DefaultLeafLifetime)
	}
	return nil
}

// Validate checks the lifetime.
func (iss *Issuer) Validate() error {
	if iss.Lifetime < 0 {
		return errors.New("lifetime must be positive")
	}
	return nil
}

// IssuerKey implements certmagic.Issuer. Certificates are stored under it,
// so a new Org CA (a new org id) never reuses the old CA's certificates.
func (iss *Issuer) IssuerKey() string { return "mastio-" + iss.m.OrgID() }

// Issue implements certmagic.Issuer.
func (iss *Issuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	chain, err := iss.m.IssueServerCert(ctx, csr, time.Duration(iss.Lifetime))
	if err != nil {
		return nil, err
	}
	return &certmagic.IssuedCertificate{Certificate: chain}, nil
}

// UnmarshalCaddyfile sets up the issuer from Caddyfile tokens. Syntax:
//
//	... mastio {
//	    lifetime <duration>
//	}
func (iss *Issuer) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume issuer name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "lifetime":
			if iss.Lifetime != 0 {
				return d.Err("lifetime already specified")
			}
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("lifetime %q: %v", d.Val(), err)
			}
			if dur <= 0 {
				return d.Errf("lifetime must be positive, got %s", d.Val())
			}
			iss.Lifetime = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized mastio issuer option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Issuer)(nil)
	_ caddy.Validator       = (*Issuer)(nil)
	_ certmagic.Issuer      = (*Issuer)(nil)
	_ caddyfile.Unmarshaler = (*Issuer)(nil)
)
