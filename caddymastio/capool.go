package caddymastio

import (
	"crypto/x509"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func init() {
	caddy.RegisterModule(CAPool{})
}

// CAPool is a client-authentication trust pool holding the Org root and
// every live Mastio intermediate, so agents that send their leaf alone are
// verified as well as those that send the whole chain. Use it in a site's
// `client_auth { trust_pool mastio }`.
//
// Caddy reads a trust pool when the config loads: an intermediate created
// later is trusted after the next config reload.
type CAPool struct {
	pool  *x509.CertPool
	certs []*x509.Certificate
}

// CaddyModule returns the Caddy module information.
func (CAPool) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.ca_pool.source.mastio",
		New: func() caddy.Module { return new(CAPool) },
	}
}

// Provision builds the pool from the mastio app's CA.
func (p *CAPool) Provision(ctx caddy.Context) error {
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	ca := app.(*App).Mastio().CA()
	p.certs = append([]*x509.Certificate{ca.Root()}, ca.Intermediates()...)
	p.pool = x509.NewCertPool()
	for _, c := range p.certs {
		p.pool.AddCert(c)
	}
	return nil
}

// CertPool implements caddytls.CA.
func (p *CAPool) CertPool() *x509.CertPool { return p.pool }

// Certificates implements caddytls.CertificateProvider, so the pool can be
// combined with others.
func (p *CAPool) Certificates() []*x509.Certificate { return p.certs }

// UnmarshalCaddyfile sets up the pool from Caddyfile tokens. Syntax:
//
//	trust_pool mastio
func (p *CAPool) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume module name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("trust_pool mastio takes no options, got %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner            = (*CAPool)(nil)
	_ caddytls.CA                  = (*CAPool)(nil)
	_ caddytls.CertificateProvider = (*CAPool)(nil)
	_ caddyfile.Unmarshaler        = (*CAPool)(nil)
)
