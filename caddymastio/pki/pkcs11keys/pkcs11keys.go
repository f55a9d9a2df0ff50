//go:build pkcs11

// Package pkcs11keys keeps the Org CA's and intermediate's keys in an HSM
// through PKCS#11 (github.com/ThalesGroup/crypto11): the keys are made in
// the token and never leave it; the CA signs through them. It needs cgo,
// so it is built only with the pkcs11 build tag.
//
// Each key pair is labelled with its key name (org-ca.key,
// intermediate.key) and found by the public key of its certificate, so
// that an intermediate and its successor can share the label.
package pkcs11keys

import (
	"crypto"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/ThalesGroup/crypto11"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// Config says which token to use.
type Config struct {
	// Module is the path of the PKCS#11 library (for SoftHSM:
	// /usr/lib/softhsm/libsofthsm2.so).
	Module string
	// TokenLabel names the token.
	TokenLabel string
	// PIN is the user PIN.
	PIN string
}

// Store is a pki.SignerStore in a PKCS#11 token.
type Store struct {
	cfg Config
	ctx *crypto11.Context
	mu  sync.Mutex
}

// Open logs in to the token.
func Open(cfg Config) (*Store, error) {
	if cfg.Module == "" || cfg.TokenLabel == "" {
		return nil, errors.New("pkcs11: module and token_label are required")
	}
	ctx, err := crypto11.Configure(&crypto11.Config{Path: cfg.Module, TokenLabel: cfg.TokenLabel, Pin: cfg.PIN})
	if err != nil {
		// crypto11's errors name the library and token, never the PIN.
		return nil, fmt.Errorf("pkcs11: token %q through %s: %w", cfg.TokenLabel, cfg.Module, err)
	}
	return &Store{cfg: cfg, ctx: ctx}, nil
}

func (s *Store) String() string { return "pkcs11:" + s.cfg.TokenLabel }

// Generate implements pki.SignerStore: a P-256 key pair made in the token,
// not extractable.
func (s *Store) Generate(name string) (crypto.Signer, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key, err := s.ctx.GenerateECDSAKeyPairWithLabel(id, []byte(name), elliptic.P256())
	if err != nil {
		return nil, fmt.Errorf("pkcs11: generating %s in token %q: %w", name, s.cfg.TokenLabel, err)
	}
	return key, nil
}

// Signer implements pki.SignerStore.
func (s *Store) Signer(name string, pub crypto.PublicKey) (crypto.Signer, error) {
	s.mu.Lock()
	keys, err := s.ctx.FindKeyPairs(nil, []byte(name))
	s.mu.Unlock()
	if err != nil {
		return nil, &pki.UnavailableError{Reason: "the HSM does not answer", Err: fmt.Errorf("token %q: %w", s.cfg.TokenLabel, err)}
	}
	for _, k := range keys {
		if pub == nil || samePublicKey(k.Public(), pub) {
			return k, nil
		}
	}
	return nil, fmt.Errorf("pkcs11: token %q has no key %s for this certificate: %w", s.cfg.TokenLabel, name, fs.ErrNotExist)
}

func samePublicKey(a, b crypto.PublicKey) bool {
	da, err1 := x509.MarshalPKIXPublicKey(a)
	db, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && string(da) == string(db)
}

// Load implements pki.KeyStore: keys never leave the token.
func (s *Store) Load(name string) ([]byte, error) {
	return nil, fmt.Errorf("pkcs11: %s is in token %q and cannot be exported", name, s.cfg.TokenLabel)
}

// Store implements pki.KeyStore: keys are made in the token, never
// imported.
func (s *Store) Store(name string, _ []byte) error {
	return fmt.Errorf("pkcs11: %s cannot be imported into token %q: keys are made in it", name, s.cfg.TokenLabel)
}

// Delete implements pki.KeyStore: the CA never deletes a CA key; remove
// old ones with the token's own tools.
func (s *Store) Delete(string) error { return nil }

// Close logs out.
func (s *Store) Close() error { return s.ctx.Close() }

// Interface guards
var _ pki.SignerStore = (*Store)(nil)
