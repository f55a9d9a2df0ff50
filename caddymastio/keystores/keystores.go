// Package keystores is the mastio.ca_key_stores module family: where the
// Org CA's and intermediate's private keys live when not in data_dir/pki.
// "vault" keeps them in a HashiCorp Vault KV v2 secret; "pkcs11" (in a
// build with the pkcs11 tag) in an HSM, which they never leave.
package keystores

import (
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// CAKeyStore is a mastio.ca_key_stores module.
type CAKeyStore interface {
	// CAKeys opens the key store. The Mastio keeps it for as long as its
	// data location lives (across reloads) and closes it if it is an
	// io.Closer.
	CAKeys() (pki.KeyStore, error)
}
