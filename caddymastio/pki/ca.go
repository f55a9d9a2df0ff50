// Package pki is the Org CA: a root (EC P-256, 15 years, pathLen 1) that
// signs a Mastio intermediate (EC P-256, 5 years, pathLen 0) that signs
// every leaf — server certificates for the gateway's own names and client
// certificates for agents, whose URI SAN is their SPIFFE ID.
//
// Certificates are public and written as PEM files; private keys go through
// a KeyStore. Generation happens once, under an exclusive lock on the
// directory so that two processes starting together cannot make two roots.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Lifetimes and file names of the CA material.
const (
	RootLifetime         = 15 * 365 * 24 * time.Hour
	IntermediateLifetime = 5 * 365 * 24 * time.Hour
	// IntermediateRenewBefore is how long before its expiry the current
	// intermediate is replaced; the old one stays trusted until it expires.
	IntermediateRenewBefore = 30 * 24 * time.Hour
	// DefaultLeafLifetime is the default validity of server and agent certs.
	DefaultLeafLifetime = 365 * 24 * time.Hour

	RootCertFile         = "org-ca.crt"
	RootKeyName          = "org-ca.key"
	IntermediateCertFile = "intermediate.crt"
	IntermediateKeyName  = "intermediate.key"
)

// Config says where the CA lives.
type Config struct {
	// Dir holds the certificate files (org-ca.crt, intermediate.crt, and
	// retired intermediates as intermediate-<serial>.crt).
	Dir string
	// Keys stores the private keys.
	Keys KeyStore
	// Org names the organisation in new CA subjects. Empty: the org id
	// derived from the root key (DeriveOrgID).
	Org string
	// Now returns the time; default time.Now.
	Now func() time.Time
}

// Created reports what LoadOrCreate generated.
type Created struct {
	Root         bool
	Intermediate bool
}

// CA is a loaded Org CA. It is safe for concurrent use.
type CA struct {
	cfg Config

	mu       sync.RWMutex
	root     *x509.Certificate
	rootPEM  []byte
	inter    *x509.Certificate
	interKey crypto.Signer
	retired  []*x509.Certificate // older intermediates, still trusted until they expire
}

// DeriveOrgID is the default org id: the first 16 hex digits of the
// SHA-256 of the root's SubjectPublicKeyInfo.
func DeriveOrgID(root *x509.Certificate) string {
	sum := sha256.Sum256(root.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])[:16]
}

// Fingerprint is the hex SHA-256 of a certificate's DER.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// LoadOrCreate loads the CA from cfg, generating the root and intermediate
// on first use and a new intermediate when the current one is missing or
// near expiry. A root certificate without its key (or a key without its
// certificate) is an error: that is a damaged or half-restored backup, and
// generating a fresh root would silently orphan every issued certificate.
func LoadOrCreate(cfg Config) (*CA, Created, error) {
	var created Created
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Keys == nil {
		cfg.Keys = FileKeyStore{Dir: cfg.Dir}
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, created, fmt.Errorf("creating PKI directory: %w", err)
	}
	unlock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, created, fmt.Errorf("locking PKI directory %s: %w", cfg.Dir, err)
	}
	defer unlock()

	ca := &CA{cfg: cfg}
	rootPath := filepath.Join(cfg.Dir, RootCertFile)
	rootPEM, err := os.ReadFile(rootPath)
	switch {
	case err == nil:
		if ca.root, err = parseCertPEM(rootPEM); err != nil {
			return nil, created, fmt.Errorf("root certificate %s: %w", rootPath, err)
		}
		ca.rootPEM = rootPEM
		if _, err := cfg.Keys.Load(RootKeyName); err != nil {
			return nil, created, fmt.Errorf("root certificate %s exists but its private key %q cannot be loaded from %s: %w; "+
				"restore both from the same backup", rootPath, RootKeyName, cfg.Keys, err)
		}
	case errors.Is(err, os.ErrNotExist):
		if _, kerr := cfg.Keys.Load(RootKeyName); kerr == nil {
			return nil, created, fmt.Errorf("root private key %q exists in %s but the certificate %s is missing; "+
				"restore both from the same backup", RootKeyName, cfg.Keys, rootPath)
		}
		if err := ca.createRoot(); err != nil {
			return nil, created, err
		}
		created.Root = true
	default:
		return nil, created, fmt.Errorf("reading root certificate: %w", err)
	}

	if err := ca.loadIntermediates(); err != nil {
		return nil, created, err
	}
	now := cfg.Now()
	if created.Root || ca.inter == nil || ca.interKey == nil || now.Add(IntermediateRenewBefore).After(ca.inter.NotAfter) {
		if err := ca.createIntermediate(); err != nil {
			return nil, created, err
		}
		created.Intermediate = true
	}
	return ca, created, nil
}

func (ca *CA) createRoot() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating root key: %w", err)
	}
	org := ca.cfg.Org
	if org == "" {
		spki, err := x509.MarshalPKIXPublicKey(key.Public())
		if err != nil {
			return err
		}
		sum := sha256.Sum256(spki)
		org = hex.EncodeToString(sum[:])[:16]
	}
	now := ca.cfg.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: org + " Org CA", Organization: []string{org}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(RootLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("creating root certificate: %w", err)
	}
	keyPEM, err := MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	// Key first: a crash between the two writes leaves a key without a
	// certificate, which LoadOrCreate reports instead of replacing.
	if err := ca.cfg.Keys.Store(RootKeyName, keyPEM); err != nil {
		return fmt.Errorf("storing root key: %w", err)
	}
	ca.rootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileAtomic(filepath.Join(ca.cfg.Dir, RootCertFile), ca.rootPEM, 0o644); err != nil {
		return err
	}
	ca.root, _ = x509.ParseCertificate(der)
	return nil
}

func (ca *CA) loadIntermediates() error {
	path := filepath.Join(ca.cfg.Dir, IntermediateCertFile)
	data, err := os.ReadFile(path)
	if err == nil {
		cert, err := parseCertPEM(data)
		if err != nil {
			return fmt.Errorf("intermediate certificate %s: %w", path, err)
		}
		if err := cert.CheckSignatureFrom(ca.root); err != nil {
			return fmt.Errorf("intermediate certificate %s is not signed by the root %s: %w", path, RootCertFile, err)
		}
		key, err := LoadSigner(ca.cfg.Keys, IntermediateKeyName)
		if err != nil && !IsNotExist(err) {
			return fmt.Errorf("intermediate key: %w", err)
		}
		if key != nil && !publicKeysEqual(key.Public(), cert.PublicKey) {
			return fmt.Errorf("intermediate key %q does not match %s", IntermediateKeyName, path)
		}
		ca.inter, ca.interKey = cert, key
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading intermediate certificate: %w", err)
	}
	matches, _ := filepath.Glob(filepath.Join(ca.cfg.Dir, "intermediate-*.crt"))
	sort.Strings(matches)
	for _, m := range matches {
		data, err := os.ReadFile(m)
		if err != nil {
			return err
		}
		cert, err := parseCertPEM(data)
		if err != nil {
			return fmt.Errorf("retired intermediate %s: %w", m, err)
		}
		if cert.CheckSignatureFrom(ca.root) == nil && ca.cfg.Now().Before(cert.NotAfter) {
			ca.retired = append(ca.retired, cert)
		}
	}
	return nil
}

func (ca *CA) createIntermediate() error {
	rootKey, err := LoadSigner(ca.cfg.Keys, RootKeyName)
	if err != nil {
		return fmt.Errorf("loading root key to sign a new intermediate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating intermediate key: %w", err)
	}
	now := ca.cfg.Now()
	org := ca.root.Subject.Organization
	name := "Mastio"
	if len(org) > 0 {
		name = org[0] + " Mastio"
	}
	notAfter := now.Add(IntermediateLifetime)
	if notAfter.After(ca.root.NotAfter) {
		notAfter = ca.root.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: name + " Intermediate CA", Organization: org},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.root, key.Public(), rootKey)
	if err != nil {
		return fmt.Errorf("creating intermediate certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyPEM, err := MarshalPrivateKey(key)
	if err != nil {
		return err
	}
	// Keep the outgoing intermediate as a retired one: certificates it
	// signed stay valid until it expires.
	ca.mu.RLock()
	outgoing := ca.inter
	ca.mu.RUnlock()
	if outgoing != nil && now.Before(outgoing.NotAfter) {
		old := filepath.Join(ca.cfg.Dir, fmt.Sprintf("intermediate-%s.crt", outgoing.SerialNumber.Text(16)))
		if err := writeFileAtomic(old, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: outgoing.Raw}), 0o644); err != nil {
			return err
		}
	} else {
		outgoing = nil
	}
	if err := ca.cfg.Keys.Store(IntermediateKeyName, keyPEM); err != nil {
		return fmt.Errorf("storing intermediate key: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(ca.cfg.Dir, IntermediateCertFile),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	ca.mu.Lock()
	ca.inter, ca.interKey = cert, key
	if outgoing != nil {
		ca.retired = append(ca.retired, outgoing)
	}
	ca.mu.Unlock()
	return nil
}

// Root returns the root certificate.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// RootPEM returns the root certificate as PEM, as agents pin it.
func (ca *CA) RootPEM() []byte { return ca.rootPEM }

// Intermediate returns the current (signing) intermediate.
func (ca *CA) Intermediate() *x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.inter
}

// Intermediates returns every live intermediate, the current one first.
func (ca *CA) Intermediates() []*x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	now := ca.cfg.Now()
	out := []*x509.Certificate{ca.inter}
	for _, c := range ca.retired {
		if now.Before(c.NotAfter) {
			out = append(out, c)
		}
	}
	return out
}

// Check reports whether the CA can issue: the files it was loaded from are
// still on disk (a restart would otherwise fail or, worse, look like a
// first start) and the intermediate is within its validity period.
func (ca *CA) Check() error {
	for _, f := range []string{RootCertFile, IntermediateCertFile} {
		if _, err := os.Stat(filepath.Join(ca.cfg.Dir, f)); err != nil {
			return fmt.Errorf("CA file %s: %w", filepath.Join(ca.cfg.Dir, f), err)
		}
	}
	for _, k := range []string{RootKeyName, IntermediateKeyName} {
		if _, err := ca.cfg.Keys.Load(k); err != nil {
			return fmt.Errorf("CA key %q: %w", k, err)
		}
	}
	inter := ca.Intermediate()
	now := ca.cfg.Now()
	if now.Before(inter.NotBefore) || now.After(inter.NotAfter) {
		return fmt.Errorf("intermediate certificate is outside its validity period (%s – %s)",
			inter.NotBefore.Format(time.RFC3339), inter.NotAfter.Format(time.RFC3339))
	}
	return nil
}

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

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey, lifetime time.Duration) (*x509.Certificate, error) {
	if err := checkLeafKey(pub); err != nil {
		return nil, err
	}
	if lifetime <= 0 {
		lifetime = DefaultLeafLifetime
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

// RootPool returns a pool holding only the root.
func (ca *CA) RootPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root)
	return p
}

// IntermediatePool returns a pool of every live intermediate.
func (ca *CA) IntermediatePool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range ca.Intermediates() {
		p.AddCert(c)
	}
	return p
}

func checkLeafKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("unsupported EC curve %s: use P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small: use at least 2048", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	return x509.ParseCertificate(block.Bytes)
}

// ParseCertificatesPEM decodes every CERTIFICATE block in data.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate found")
	}
	return out, nil
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
