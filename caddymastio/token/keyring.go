// Package token holds the access-token signing key ring and the access
// tokens it signs: ES256 JWTs (RFC 9068 "at+jwt") bound to a DPoP key
// (cnf.jkt, RFC 9449) and, over mTLS, to the client certificate
// (cnf.x5t#S256, RFC 8705).
package token

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// SigningKey is one key of the ring.
type SigningKey struct {
	// Kid is the RFC 7638 thumbprint of the public key.
	Kid    string
	Alg    string
	Status string // staged | active | deprecated
	// ExpiresAt ends the verification grace of a deprecated key.
	ExpiresAt time.Time
	// ActivatedAt is when the key started signing (zero if unknown).
	ActivatedAt time.Time
	Public      crypto.PublicKey
	signer      crypto.Signer
	keyRef      string // name of the private key in the key store
}

// KeyRing is the set of signing keys the store keeps, with the private
// keys in a pki.KeyStore.
type KeyRing struct {
	st   store.Reader
	log  *audit.Log // every change, with its audit row
	keys pki.KeyStore

	mu     sync.RWMutex
	active *SigningKey
	all    map[string]*SigningKey
	jwks   []byte
	etag   string
}

// OpenKeyRing loads the ring, creating the first ES256 key when there is
// no active one (audited as token.signing_key_created). created reports
// whether a key was generated.
func OpenKeyRing(ctx context.Context, st store.Reader, log *audit.Log, keys pki.KeyStore) (ring *KeyRing, created *SigningKey, err error) {
	ring = &KeyRing{st: st, log: log, keys: keys}
	if err := ring.load(ctx); err != nil {
		return nil, nil, err
	}
	if ring.Active() != nil {
		return ring, nil, nil
	}
	k, err := ring.createActive(ctx)
	if err != nil {
		// Another process may have created it first; only one key can be
		// active, so that is a conflict. Reload and use theirs.
		if lerr := ring.load(ctx); lerr == nil && ring.Active() != nil {
			return ring, nil, nil
		}
		return nil, nil, err
	}
	if err := ring.load(ctx); err != nil {
		return nil, nil, err
	}
	return ring, k, nil
}

// createActive generates a key and records it as the active one.
func (r *KeyRing) createActive(ctx context.Context) (*SigningKey, error) {
	k, pub, err := r.generate()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	_, err = r.log.Change(ctx, func(c *audit.Change) error {
		if err := c.InsertSigningKey(ctx, &store.SigningKey{Kid: k.Kid, Alg: k.Alg, PublicJWK: pub, KeyRef: k.keyRef,
			Status: store.KeyActive, CreatedAt: now, ActivatedAt: &now}); err != nil {
			return err
		}
		c.Record(audit.Event{Type: "token.signing_key_created", Actor: "system", Subject: k.Kid,
			Details: map[string]any{"alg": k.Alg, "status": k.Status}})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("recording signing key: %w", err)
	}
	return k, nil
}

// generate makes a new ES256 key, stores its private half in the key
// store, and returns it with its public JWK (JSON).
func (r *KeyRing) generate() (*SigningKey, string, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("generating signing key: %w", err)
	}
	jwk, kid, err := jwt.PublicJWK(priv.Public(), "", jwt.ES256, "sig")
	if err != nil {
		return nil, "", fmt.Errorf("signing key JWK: %w", err)
	}
	jwk["kid"] = kid
	pub, err := json.Marshal(jwk)
	if err != nil {
		return nil, "", err
	}
	keyPEM, err := pki.MarshalPrivateKey(priv)
	if err != nil {
		return nil, "", err
	}
	ref := "signing-" + kid + ".key"
	if err := r.keys.Store(ref, keyPEM); err != nil {
		return nil, "", fmt.Errorf("storing signing key: %w", err)
	}
	return &SigningKey{Kid: kid, Alg: "ES256", Status: "active", Public: priv.Public(), signer: priv, keyRef: ref}, string(pub), nil
}

func (r *KeyRing) load(ctx context.Context) error {
	stored, err := r.st.SigningKeys(ctx, store.KeyActive, store.KeyDeprecated)
	if err != nil {
		return fmt.Errorf("reading signing keys: %w", err)
	}
	all := map[string]*SigningKey{}
	var active *SigningKey
	now := time.Now()
	for _, sk := range stored {
		pub, _, err := jwt.ParseJWK([]byte(sk.PublicJWK))
		if err != nil {
			return fmt.Errorf("signing key %s: public JWK: %w", sk.Kid, err)
		}
		k := &SigningKey{Kid: sk.Kid, Alg: sk.Alg, Status: sk.Status, Public: pub, keyRef: sk.KeyRef}
		if sk.ActivatedAt != nil {
			k.ActivatedAt = *sk.ActivatedAt
		}
		if sk.ExpiresAt != nil {
			k.ExpiresAt = *sk.ExpiresAt
			if sk.Status == store.KeyDeprecated && now.After(k.ExpiresAt) {
				continue // past its grace: no longer verifies
			}
		}
		if sk.Status == store.KeyActive {
			signer, err := pki.LoadSigner(r.keys, sk.KeyRef)
			if err != nil {
				return fmt.Errorf("active signing key %s: %w", sk.Kid, err)
			}
			k.signer = signer
			active = k
		}
		all[sk.Kid] = k
	}
	jwks, etag := buildJWKS(all, now)
	r.mu.Lock()
	r.active, r.all, r.jwks, r.etag = active, all, jwks, etag
	r.mu.Unlock()
	return nil
}

// Reload re-reads the ring from the database (after a rotation made by
// another process sharing it).
func (r *KeyRing) Reload(ctx context.Context) error { return r.load(ctx) }

// Active returns the key new tokens are signed with (nil if none).
func (r *KeyRing) Active() *SigningKey {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.active
}

// Check is the readiness check: there is an active key, it can sign, and
// the key store still holds it (a restart would need it). It does not
// touch the database, whose health is a check of its own.
func (r *KeyRing) Check() error {
	k := r.Active()
	if k == nil || k.signer == nil {
		return errors.New("no active signing key")
	}
	if _, err := r.keys.Load(k.keyRef); err != nil {
		return fmt.Errorf("active signing key %s: %w", k.Kid, err)
	}
	return nil
}
