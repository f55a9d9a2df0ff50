package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"
)

// SignerStore is a KeyStore whose keys never leave it (an HSM): the CA
// asks it to make a key and finds the key by its name and public key,
// never asking for the key itself. Its Load and Store refuse.
type SignerStore interface {
	KeyStore
	// Generate makes a new EC P-256 key pair called name in the store.
	// Several pairs may share a name (an intermediate and its successor):
	// Signer tells them apart by public key.
	Generate(name string) (crypto.Signer, error)
	// Signer returns the key pair called name whose public key is pub (any
	// of that name when pub is nil), or an error wrapping fs.ErrNotExist.
	Signer(name string, pub crypto.PublicKey) (crypto.Signer, error)
}

// signer returns the CA key called name, which must match pub (when not
// nil): from an HSM by reference, from any other store by loading it.
func (ca *CA) signer(name string, pub crypto.PublicKey) (crypto.Signer, error) {
	if ss, ok := ca.cfg.Keys.(SignerStore); ok {
		return ss.Signer(name, pub)
	}
	key, err := LoadSigner(ca.cfg.Keys, name)
	if err != nil {
		return nil, err
	}
	if pub != nil && !publicKeysEqual(key.Public(), pub) {
		return nil, fmt.Errorf("the key %q in %s does not match its certificate", name, ca.cfg.Keys)
	}
	return key, nil
}

// generate makes a new CA key called name: in an HSM, at once; otherwise
// in memory, written to the key store by Persist.
func (ca *CA) generate(name string) (crypto.Signer, error) {
	if ss, ok := ca.cfg.Keys.(SignerStore); ok {
		key, err := ss.Generate(name)
		if err != nil {
			return nil, fmt.Errorf("generating %s in %s: %w", name, ss, err)
		}
		return key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating %s: %w", name, err)
	}
	keyPEM, err := MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	ca.pending = append(ca.pending, pendingWrite{key: name, data: keyPEM})
	return key, nil
}

// rootPublic is the root's public key once there is a root.
func (ca *CA) rootPublic() crypto.PublicKey {
	if ca.root == nil {
		return nil
	}
	return ca.root.PublicKey
}

// keysRetryEvery bounds how often an unavailable key store is asked again.
const keysRetryEvery = 2 * time.Second

// KeyStore describes where the CA's keys are (never key material).
func (ca *CA) KeyStore() string { return ca.cfg.Keys.String() }

// KeysErr is why the CA has not its keys (its key store is unavailable),
// or nil.
func (ca *CA) KeysErr() error {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.keysErr
}

// RetryKeys asks an unavailable key store for the CA's keys again (at
// most every keysRetryEvery) and returns why they are still missing, or
// nil once the CA has them.
func (ca *CA) RetryKeys() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if ca.keysErr == nil {
		return nil
	}
	now := ca.cfg.Now()
	if now.Sub(ca.keysTried) < keysRetryEvery {
		return ca.keysErr
	}
	ca.keysTried = now
	if _, err := ca.signer(RootKeyName, ca.root.PublicKey); err != nil {
		ca.keysErr = err
		return err
	}
	key, err := ca.signer(IntermediateKeyName, ca.inter.PublicKey)
	if err != nil {
		ca.keysErr = err
		return err
	}
	ca.interKey, ca.keysErr = key, nil
	return nil
}
