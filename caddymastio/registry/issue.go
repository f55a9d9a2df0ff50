package registry

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Issuing agent certificates: the keys minted for agents that bring none,
// the certificate signed by the Org CA, and its stored record.

func mintKey() (crypto.PublicKey, string, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	pemBytes, err := pki.MarshalPrivateKey(k)
	if err != nil {
		return nil, "", err
	}
	return k.Public(), string(pemBytes), nil
}

func (r *Registry) issue(p Issuance, name string, pub crypto.PublicKey) (*x509.Certificate, string, string, error) {
	keyPEM := ""
	if pub == nil {
		var err error
		if pub, keyPEM, err = mintKey(); err != nil {
			return nil, "", "", fmt.Errorf("minting agent key: %w", err)
		}
	}
	cert, err := r.cfg.CA.IssueAgent(pki.AgentCert{
		PublicKey: pub,
		Identity:  pki.AgentIdentity{TrustDomain: p.TrustDomain, Org: r.cfg.Org, Name: name},
		Lifetime:  p.AgentCertLifetime,
	})
	if pki.Unavailable(err) != nil {
		return nil, "", "", fmt.Errorf("issuing the agent certificate: %w", err) // the key store's trouble, not the request's
	}
	if err != nil {
		return nil, "", "", &Error{Status: 400, Code: "invalid_request", Field: "public_key_pem", Message: err.Error()}
	}
	return cert, string(r.cfg.CA.ChainPEM(cert)), keyPEM, nil
}

func certSum(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// newCert is the stored record of a certificate just issued to agentID.
func newCert(agentID string, cert *x509.Certificate, chainPEM string, now time.Time) *store.Cert {
	return &store.Cert{SHA256: certSum(cert), AgentID: agentID, Serial: cert.SerialNumber.Text(16), ChainPEM: chainPEM,
		NotBefore: cert.NotBefore, NotAfter: cert.NotAfter, Status: store.CertActive, CreatedAt: now}
}
