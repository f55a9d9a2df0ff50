package mastio

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// What the TLS edge asks of the core: server certificates signed by the
// Org CA, and the check of a client certificate at the handshake.

// IssueServerCert signs a server certificate for csr, audited
// (pki.server_cert_issued), and returns it with the intermediate in PEM.
func (m *Mastio) IssueServerCert(ctx context.Context, csr *x509.CertificateRequest, lifetime time.Duration) ([]byte, error) {
	if err := m.Open(); err != nil { // the tls app may start before the mastio app
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR signature: %w", err)
	}
	ips := make([]string, 0, len(csr.IPAddresses))
	for _, ip := range csr.IPAddresses {
		ips = append(ips, ip.String())
	}
	leaf, err := m.ca.IssueServer(pki.ServerCert{PublicKey: csr.PublicKey, DNSNames: csr.DNSNames, IPs: ips, Lifetime: lifetime})
	if err != nil {
		return nil, err
	}
	names := append(append([]string{}, csr.DNSNames...), ips...)
	if _, err := m.audit.Append(ctx, audit.Event{Type: "pki.server_cert_issued", Actor: "system",
		Subject: names[0], Details: map[string]any{
			"names":     names,
			"serial":    leaf.SerialNumber.Text(16),
			"sha256":    pki.Fingerprint(leaf),
			"not_after": leaf.NotAfter.UTC().Format(time.RFC3339),
		}}); err != nil {
		return nil, fmt.Errorf("auditing certificate issuance: %w", err)
	}
	m.log.Info("issued server certificate", zap.Strings("names", names),
		zap.String("serial", leaf.SerialNumber.Text(16)), zap.Time("not_after", leaf.NotAfter))
	var buf bytes.Buffer
	pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw})
	pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: m.ca.Intermediate().Raw})
	return buf.Bytes(), nil
}

// CheckHandshakeCert checks a client certificate at the TLS handshake: it
// must chain to the Org CA (checked here when the TLS layer did not,
// verified false) and be pinned to an active agent. "No certificate" is
// no opinion. A refused certificate of a known agent is audited
// (auth.refused, stage tls_handshake); others are logged with sampling.
func (m *Mastio) CheckHandshakeCert(rawCerts [][]byte, verified bool) error {
	if len(rawCerts) == 0 {
		return nil
	}
	if err := m.Open(); err != nil {
		return fmt.Errorf("the Mastio's state cannot be opened: %w", err)
	}
	if !verified {
		certs := make([]*x509.Certificate, 0, len(rawCerts))
		for _, raw := range rawCerts {
			c, err := x509.ParseCertificate(raw)
			if err != nil {
				return fmt.Errorf("client certificate: %w", err)
			}
			certs = append(certs, c)
		}
		if err := m.VerifyChain(certs[0], certs[1:]); err != nil {
			m.LogDecision(nil, "client certificate refused at handshake", Decision{Kind: KindHandshake, Reason: DenyCertUntrusted,
				Fields: []zap.Field{zap.Error(err)}})
			return errors.New("client certificate is not issued by the Org CA")
		}
	}
	if _, cerr := m.registry.CheckDER(rawCerts[0]); cerr != nil {
		if cerr.AgentID == "" { // a certificate of nobody we know: counted, sampled
			m.LogDecision(nil, "client certificate refused at handshake", Decision{Kind: KindHandshake, Reason: cerr.Code})
			return errors.New(cerr.Message)
		}
		m.LogDecision(nil, "client certificate refused at handshake", Decision{Kind: KindHandshake, Reason: cerr.Code, AgentID: cerr.AgentID})
		m.AuditRefusalDetails(context.Background(), "auth.refused", cerr.AgentID, map[string]any{"stage": "tls_handshake",
			"reason": cerr.Code, "message": cerr.Message, "cert_sha256": fmt.Sprintf("%x", sha256.Sum256(rawCerts[0]))})
		return errors.New(cerr.Message)
	}
	return nil
}
