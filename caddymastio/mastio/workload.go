package mastio

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// The Mastio's own certificates from the Org CA, one per job, each for a
// key that lives only in memory: "mastio" presents itself to upstreams
// (mTLS), "mastio-audit" signs audit checkpoints. Their SPIFFE IDs,
// spiffe://<trust domain>/<org>/workload/<name>, have three path segments:
// no agent (/<org>/<name>) can hold one.
const (
	workloadUpstream = "mastio"
	workloadAudit    = "mastio-audit"
)

// workloadLifetime is how long a workload certificate is valid; it is
// renewed when a third of that is left.
const workloadLifetime = 24 * time.Hour

// workloadCerts are the Mastio's workload certificates, per data location.
type workloadCerts struct {
	mu    sync.Mutex
	certs map[string]*tls.Certificate
}

func (m *Mastio) workloadSPIFFEID(name string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: m.cfg.TrustDomain, Path: "/" + m.orgID + "/workload/" + name}
}

// WorkloadSPIFFEID is the SPIFFE ID the Mastio presents to upstreams.
func (m *Mastio) WorkloadSPIFFEID() *url.URL { return m.workloadSPIFFEID(workloadUpstream) }

// AuditSignerSPIFFEID is the SPIFFE ID of the certificate that signs
// audit checkpoints.
func (m *Mastio) AuditSignerSPIFFEID() *url.URL { return m.workloadSPIFFEID(workloadAudit) }

// WorkloadCertificate is the Mastio's client certificate for upstreams.
func (m *Mastio) WorkloadCertificate() (*tls.Certificate, error) {
	return m.workloadCertificate(workloadUpstream, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

// workloadCertificate returns the named workload's certificate (and the
// intermediate that issued it), issuing one when there is none, when less
// than a third of its life is left, or when the trust domain changed.
func (m *Mastio) workloadCertificate(name string, usages []x509.ExtKeyUsage) (*tls.Certificate, error) {
	w := &m.workload
	w.mu.Lock()
	defer w.mu.Unlock()
	id := m.workloadSPIFFEID(name)
	if c := w.certs[name]; c != nil && time.Until(c.Leaf.NotAfter) > workloadLifetime/3 && c.Leaf.URIs[0].String() == id.String() {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leaf, err := m.ca.IssueWorkload(pki.WorkloadCert{PublicKey: key.Public(), SPIFFEID: id, Name: name + " " + m.orgID,
		Org: m.orgID, Usages: usages, Lifetime: workloadLifetime})
	if err != nil {
		return nil, fmt.Errorf("issuing the Mastio's %s certificate: %w", name, err)
	}
	chain := [][]byte{leaf.Raw}
	for _, in := range m.ca.Intermediates() {
		if bytes.Equal(leaf.RawIssuer, in.RawSubject) {
			chain = append(chain, in.Raw)
			break
		}
	}
	if w.certs == nil {
		w.certs = map[string]*tls.Certificate{}
	}
	w.certs[name] = &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
	return w.certs[name], nil
}
