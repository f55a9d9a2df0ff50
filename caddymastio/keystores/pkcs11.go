//go:build pkcs11

package keystores

import (
	"fmt"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki/pkcs11keys"
)

func init() { caddy.RegisterModule(PKCS11{}) }

// PKCS11 keeps the Org CA's and intermediate's keys in an HSM, through its
// PKCS#11 library: they are made in the token and never leave it (no key
// file ever exists). Built only with the pkcs11 build tag (it needs cgo):
// xcaddy build --with github.com/caddy-mastio/caddy-mastio -- -tags pkcs11,
// or go build -tags pkcs11 ./cmd/caddy.
type PKCS11 struct {
	// Path of the token's PKCS#11 library, e.g.
	// /usr/lib/softhsm/libsofthsm2.so.
	Module string `json:"module,omitempty"`
	// Label of the token.
	TokenLabel string `json:"token_label,omitempty"`
	// File holding the user PIN (mode 0600). Never put the PIN itself in
	// the config.
	PINFile string `json:"pin_file,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (PKCS11) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "mastio.ca_key_stores.pkcs11", New: func() caddy.Module { return new(PKCS11) }}
}

// Validate checks the settings.
func (p *PKCS11) Validate() error {
	if p.Module == "" || p.TokenLabel == "" || p.PINFile == "" {
		return fmt.Errorf("pkcs11: module, token_label and pin_file are required")
	}
	return nil
}

// CAKeys implements CAKeyStore: a session logged in to the token.
func (p *PKCS11) CAKeys() (pki.KeyStore, error) {
	repl := caddy.NewReplacer()
	pinFile, err := repl.ReplaceOrErr(p.PINFile, true, true)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: pin_file: %w", err)
	}
	fi, err := os.Stat(pinFile)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: pin_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pkcs11: pin_file %s has mode %04o: it must be 0600", pinFile, fi.Mode().Perm())
	}
	pin, err := os.ReadFile(pinFile)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: pin_file: %w", err)
	}
	return pkcs11keys.Open(pkcs11keys.Config{Module: repl.ReplaceAll(p.Module, ""), TokenLabel: p.TokenLabel, PIN: strings.TrimSpace(string(pin))})
}

// UnmarshalCaddyfile reads the block of ca_key_store pkcs11:
//
//	ca_key_store pkcs11 {
//		module      <path to the PKCS#11 library>
//		token_label <label>
//		pin_file    <file>
//	}
func (p *PKCS11) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalOptions(d, "pkcs11", map[string]*string{"module": &p.Module, "token_label": &p.TokenLabel, "pin_file": &p.PINFile})
}

// Interface guards
var (
	_ caddy.Validator       = (*PKCS11)(nil)
	_ caddyfile.Unmarshaler = (*PKCS11)(nil)
	_ CAKeyStore            = (*PKCS11)(nil)
)
