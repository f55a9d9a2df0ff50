// Package keystores is the mastio.ca_key_stores module family: where the
// Org CA's and intermediate's private keys live when not in data_dir/pki.
// "vault" keeps them in a HashiCorp Vault KV v2 secret; "pkcs11" (in a
// build with the pkcs11 tag) in an HSM, which they never leave.
package keystores

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// CAKeyStore is a mastio.ca_key_stores module.
type CAKeyStore interface {
	// CAKeys opens the key store. The Mastio keeps it for as long as its
	// data location lives (across reloads) and closes it if it is an
	// io.Closer.
	CAKeys() (pki.KeyStore, error)
}

// unmarshalOptions reads a store's block of one-value options into opts
// (option name to field); the store name was read already, and takes no
// arguments.
func unmarshalOptions(d *caddyfile.Dispenser, store string, opts map[string]*string) error {
	d.Next() // the store name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		target, ok := opts[opt]
		if !ok {
			return d.Errf("unknown %s option %q", store, opt)
		}
		if !d.Args(target) || d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}
