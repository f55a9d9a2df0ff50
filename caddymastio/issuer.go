package caddymastio

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
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

	app    *App
	logger *zap.Logger
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
	iss.logger = ctx.Logger()
	app, err := ctx.App("mastio")
	if err != nil {
		return err
	}
	iss.app = app.(*App)
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
func (iss *Issuer) IssuerKey() string { return "mastio-" + iss.app.OrgIDValue() }

// Issue implements certmagic.Issuer.
func (iss *Issuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if err := iss.app.ready(); err != nil { // the tls app may start before the mastio app
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	ips := make([]string, 0, len(csr.IPAddresses))
	for _, ip := range csr.IPAddresses {
		ips = append(ips, ip.String())
	}
	leaf, err := iss.app.CA().IssueServer(pki.ServerCert{
		PublicKey: csr.PublicKey,
		DNSNames:  csr.DNSNames,
		IPs:       ips,
		Lifetime:  time.Duration(iss.Lifetime),
	})
	if err != nil {
		return nil, err
	}
	names := append(append([]string{}, csr.DNSNames...), ips...)
	if _, err := iss.app.Audit().Append(ctx, audit.Event{Type: "pki.server_cert_issued", Actor: "system",
		Subject: names[0], Details: map[string]any{
			"names":     names,
			"serial":    leaf.SerialNumber.Text(16),
			"sha256":    pki.Fingerprint(leaf),
			"not_after": leaf.NotAfter.UTC().Format(time.RFC3339),
		}}); err != nil {
		return nil, fmt.Errorf("auditing certificate issuance: %w", err)
	}
	iss.logger.Info("issued server certificate", zap.Strings("names", names),
		zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("not_after", leaf.NotAfter))
	var buf bytes.Buffer
	pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
	pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: iss.app.CA().Intermediate().Raw})
	return &certmagic.IssuedCertificate{Certificate: buf.Bytes()}, nil
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
