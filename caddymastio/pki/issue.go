package pki

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// ServerCert describes a TLS server certificate to issue.
type ServerCert struct {
	PublicKey crypto.PublicKey
	DNSNames  []string
	IPs       []string
	Lifetime  time.Duration
}

// AgentCert describes an agent client certificate to issue.
type AgentCert struct {
	PublicKey crypto.PublicKey
	Identity  AgentIdentity
	Lifetime  time.Duration
}

// IssueServer signs a serverAuth certificate for the given names.
func (ca *CA) IssueServer(req ServerCert) (*x509.Certificate, error) {
	if len(req.DNSNames) == 0 && len(req.IPs) == 0 {
		return nil, errors.New("server certificate needs at least one DNS name or IP address")
	}
	tmpl := &x509.Certificate{
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		DNSNames:    req.DNSNames,
	}
	for _, s := range req.IPs {
		ip := parseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("invalid IP address %q", s)
		}
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
	}
	cn := ""
	if len(req.DNSNames) > 0 {
		cn = req.DNSNames[0]
	} else {
		cn = req.IPs[0]
	}
	tmpl.Subject = pkix.Name{CommonName: cn}
	return ca.sign(tmpl, req.PublicKey, req.Lifetime)
}

// IssueAgent signs a clientAuth certificate whose single URI SAN is the
// agent's SPIFFE ID and whose CN is its agent id.
func (ca *CA) IssueAgent(req AgentCert) (*x509.Certificate, error) {
	if err := req.Identity.Validate(); err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: req.Identity.AgentID(), Organization: []string{req.Identity.Org}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		URIs:        []*url.URL{req.Identity.SPIFFEID()},
	}
	return ca.sign(tmpl, req.PublicKey, req.Lifetime)
}

// WorkloadCert describes a client certificate for a workload of the
// organisation that is not an agent (the Mastio itself, to its upstreams).
type WorkloadCert struct {
	PublicKey crypto.PublicKey
	SPIFFEID  *url.URL
	Name      string // the CN
	Org       string
	Usages    []x509.ExtKeyUsage // none: the certificate says nothing of its use (signing)
	Lifetime  time.Duration
}

// IssueWorkload signs a certificate for usages whose single URI SAN is
// the workload's SPIFFE ID.
func (ca *CA) IssueWorkload(req WorkloadCert) (*x509.Certificate, error) {
	if req.SPIFFEID == nil || req.SPIFFEID.Scheme != "spiffe" || req.Name == "" {
		return nil, errors.New("a workload certificate needs a SPIFFE ID and a name")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: req.Name, Organization: []string{req.Org}},
		ExtKeyUsage: req.Usages,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		URIs:        []*url.URL{req.SPIFFEID},
	}
	return ca.sign(tmpl, req.PublicKey, req.Lifetime)
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if err := jwt.CheckKey(pub); err != nil {
		return nil, err
	}
	if lifetime <= 0 {
		lifetime = DefaultLeafLifetime
	}
	if err := ca.RetryKeys(); err != nil {
		return nil, fmt.Errorf("the CA cannot sign: %w", err)
	}
	ca.mu.RLock()
	inter, key := ca.inter, ca.interKey
	ca.mu.RUnlock()
	now := ca.cfg.Now()
	tmpl.SerialNumber = randomSerial()
	// Backdate to tolerate client clock skew, by at most a tenth of the
	// lifetime so that short-lived certificates are not born half used.
	tmpl.NotBefore = now.Add(-min(5*time.Minute, lifetime/10))
	tmpl.NotAfter = now.Add(lifetime)
	if tmpl.NotAfter.After(inter.NotAfter) {
		tmpl.NotAfter = inter.NotAfter // a leaf never outlives its issuer
	}
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, inter, pub, key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// ChainPEM returns leaf followed by the intermediate that signed it, as a
// TLS peer sends them.
func (ca *CA) ChainPEM(leaf *x509.Certificate) []byte {
	var b bytes.Buffer
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
	for _, in := range ca.Intermediates() {
		if bytes.Equal(leaf.RawIssuer, in.RawSubject) && leaf.CheckSignatureFrom(in) == nil {
			pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: in.Raw})
			break
		}
	}
	return b.Bytes()
}

func randomSerial() *big.Int {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

func parseIP(s string) net.IP { return net.ParseIP(strings.TrimSpace(s)) }
