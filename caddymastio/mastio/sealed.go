package mastio

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// sealer seals what several instances share under the operator's
// key-encryption key (AES-256-GCM; the file name is the additional data,
// so a sealed file cannot be passed off as another).
type sealer struct{ aead cipher.AEAD }

// ReadKEK reads a key-encryption key file: 32 bytes in base64 or hex, in a
// file only its owner can read.
func ReadKEK(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key_encryption_key_file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key_encryption_key_file %s has mode %04o: it must be readable by its owner only (chmod 600 %s)",
			path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key_encryption_key_file: %w", err)
	}
	text := strings.TrimSpace(string(data))
	for _, dec := range []func(string) ([]byte, error){base64.StdEncoding.DecodeString, hex.DecodeString, base64.RawStdEncoding.DecodeString} {
		if k, err := dec(text); err == nil && len(k) == 32 {
			return k, nil
		}
	}
	return nil, fmt.Errorf("key_encryption_key_file %s must hold 32 random bytes in base64 or hex (e.g. head -c 32 /dev/urandom | base64)", path)
}

func newSealer(kek []byte) (*sealer, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) seal(name string, plain []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize())
	rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plain, []byte(name))
}

func (s *sealer) open(name string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, fmt.Errorf("sealed %s: too short", name)
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(name))
	if err != nil {
		return nil, fmt.Errorf("sealed %s cannot be opened with this key_encryption_key_file (another key, or tampered with)", name)
	}
	return plain, nil
}

// sealedKeyStore is a pki.KeyStore in the shared database, each key sealed:
// every instance reads the same keys, and none is ever on disk.
type sealedKeyStore struct {
	st     store.Store
	sealer *sealer
	prefix string // "pki/" or "keys/"
}

func (k sealedKeyStore) String() string { return "sealed:" + k.st.Location() + "/" + k.prefix }

// Load implements pki.KeyStore.
func (k sealedKeyStore) Load(name string) ([]byte, error) {
	b, err := k.st.SealedFile(context.Background(), k.prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("key %s: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return nil, err
	}
	return k.sealer.open(k.prefix+name, b)
}

// Store implements pki.KeyStore.
func (k sealedKeyStore) Store(name string, keyPEM []byte) error {
	return k.st.Update(context.Background(), func(tx store.Tx) error {
		return tx.PutSealedFile(context.Background(), k.prefix+name, k.sealer.seal(k.prefix+name, keyPEM))
	})
}

// Delete implements pki.KeyStore.
func (k sealedKeyStore) Delete(name string) error {
	return k.st.Update(context.Background(), func(tx store.Tx) error {
		_, err := tx.DeleteSealedFile(context.Background(), k.prefix+name)
		return err
	})
}

var _ pki.KeyStore = sealedKeyStore{}
