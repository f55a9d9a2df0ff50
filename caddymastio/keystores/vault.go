package keystores

import (
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki/vaultkeys"
)

func init() { caddy.RegisterModule(Vault{}) }

// Vault keeps the Org CA's keys in a HashiCorp Vault KV version 2 secret
// (default secret/data/mastio), in the fields org_ca_pem and
// intermediate_pem, as the original Mastio did. A sealed or unreachable
// Vault, a refused token or a missing field does not stop the gateway:
// agents' certificates still verify, nothing is issued, /readyz answers 503
// with the reason ("Vault is sealed"), and the gateway recovers by itself
// once Vault answers again.
type Vault struct {
	// Address of Vault. Default: $VAULT_ADDR.
	Address string `json:"address,omitempty"`
	// Mount of the KV v2 secrets engine. Default: secret.
	Mount string `json:"mount,omitempty"`
	// Path of the secret in the mount. Default: mastio.
	Path string `json:"path,omitempty"`
	// File holding the Vault token (as Vault Agent writes it); read again
	// when Vault refuses the token. Default: the token in $VAULT_TOKEN.
	TokenFile string `json:"token_file,omitempty"`
	// PEM file of the roots Vault's TLS certificate chains to. Default:
	// $VAULT_CACERT, else the system roots.
	CACert string `json:"ca_cert,omitempty"`
	// Timeout of each request to Vault. Default: 5s.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	logger *zap.Logger
	repl   *caddy.Replacer
}

// CaddyModule returns the Caddy module information.
func (Vault) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "mastio.ca_key_stores.vault", New: func() caddy.Module { return new(Vault) }}
}

// Provision keeps the logger; the store is made by CAKeys.
func (v *Vault) Provision(ctx caddy.Context) error {
	v.logger = ctx.Logger()
	v.repl = caddy.NewReplacer()
	return nil
}

// Validate checks the settings.
func (v *Vault) Validate() error {
	if v.Timeout < 0 {
		return fmt.Errorf("vault: timeout must not be negative")
	}
	return nil
}

// CAKeys implements CAKeyStore: a client of the configured Vault whose
// token is renewed while the store is open.
func (v *Vault) CAKeys() (pki.KeyStore, error) {
	cfg := vaultkeys.Config{Mount: v.Mount, Path: v.Path, Timeout: time.Duration(v.Timeout), Logger: v.logger}
	for _, f := range []struct {
		in  string
		out *string
	}{{v.Address, &cfg.Address}, {v.TokenFile, &cfg.TokenFile}, {v.CACert, &cfg.CACert}} {
		var err error
		if *f.out, err = v.repl.ReplaceOrErr(f.in, true, true); err != nil {
			return nil, fmt.Errorf("vault: %w", err)
		}
	}
	s, err := vaultkeys.New(cfg)
	if err != nil {
		return nil, err
	}
	s.Renew()
	return s, nil
}

// UnmarshalCaddyfile reads the block of ca_key_store vault:
//
//	ca_key_store vault {
//		address    <url>
//		mount      <kv v2 mount>
//		path       <secret path>
//		token_file <file>
//		ca_cert    <pem file>
//		timeout    <duration>
//	}
func (v *Vault) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	var timeout string
	if err := unmarshalOptions(d, "vault", map[string]*string{"address": &v.Address, "mount": &v.Mount, "path": &v.Path,
		"token_file": &v.TokenFile, "ca_cert": &v.CACert, "timeout": &timeout}); err != nil {
		return err
	}
	if timeout != "" {
		dur, err := caddy.ParseDuration(timeout)
		if err != nil {
			return d.Errf("vault timeout: %v", err)
		}
		v.Timeout = caddy.Duration(dur)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Vault)(nil)
	_ caddy.Validator       = (*Vault)(nil)
	_ caddyfile.Unmarshaler = (*Vault)(nil)
	_ CAKeyStore            = (*Vault)(nil)
)
