// Package client is the agent side of the Mastio: enrollment, the
// identity directory it writes, and (with the token issue) DPoP-signed
// requests. It speaks the same wire format as the original Mastio's SDK.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// Files of an identity directory.
const (
	CertFile     = "agent.crt" // leaf followed by the intermediate
	KeyFile      = "agent.key" // PKCS#8 PEM, 0600
	DPoPKeyFile  = "dpop.key"  // PKCS#8 PEM, 0600
	DPoPJWKFile  = "dpop.jwk"  // public JWK
	CAFile       = "ca.crt"    // the Org root the agent pins
	MetadataFile = "metadata.json"
	pendingFile  = "enrollment.json"
)

// Requester describes the person or system asking to enroll.
type Requester struct {
	Name   string
	Email  string
	Reason string
}

// EnrollOptions configure an enrollment.
type EnrollOptions struct {
	// URL is the Mastio's base URL, e.g. https://mastio.example.com:9443.
	URL string
	// Dir is the identity directory to create (0700).
	Dir string
	// RootCAs verifies the Mastio; nil uses the system pool.
	RootCAs *x509.CertPool
	// Requester is shown to the approving administrator.
	Requester Requester
	// HTTPClient overrides the client built from RootCAs.
	HTTPClient *http.Client
}

// Pending is a started enrollment awaiting a decision.
type Pending struct {
	SessionID    string
	PollURL      string
	EnrollURL    string
	PollInterval time.Duration
	ExpiresAt    time.Time
	opts         EnrollOptions
	key          crypto.Signer
	client       *http.Client
}

// Identity is an enrolled agent's credentials.
type Identity struct {
	Dir          string
	AgentID      string
	Capabilities []string
	Certificate  tls.Certificate
	Leaf         *x509.Certificate
	DPoPKey      crypto.Signer
	RootCAs      *x509.CertPool
	URL          string
}

// ErrNotApproved is returned when a session ends without approval.
var ErrNotApproved = errors.New("enrollment was not approved")

func httpClient(opts EnrollOptions) *http.Client {
	if opts.HTTPClient != nil {
		return opts.HTTPClient
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12}}}
}

// SignMessage signs msg the way the Mastio's enrollment expects: ECDSA
// with SHA-256 in ASN.1 DER, base64url without padding.
func SignMessage(key crypto.Signer, msg []byte) (string, error) {
	digest := sha256.Sum256(msg)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sig), nil
}

func writePrivate(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// checkPrivate refuses a private key file others may read: it may have
// leaked already, and using it silently would hide that.
func checkPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s has mode %04o: private keys must be 0600 (chmod 600 %s)", path, perm, path)
	}
	return nil
}

func readPrivate(path string) (crypto.Signer, error) {
	if err := checkPrivate(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", path)
	}
	return s, nil
}

// StartEnrollment creates the agent key and DPoP key in opts.Dir (0600),
// and asks the Mastio to enroll them. An administrator then approves or
// rejects the session; Wait polls for that.
func StartEnrollment(ctx context.Context, opts EnrollOptions) (*Pending, error) {
	if opts.URL == "" || opts.Dir == "" {
		return nil, errors.New("enroll: URL and Dir are required")
	}
	opts.URL = strings.TrimSuffix(opts.URL, "/")
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(opts.Dir, CertFile)); err == nil {
		return nil, fmt.Errorf("enroll: %s already holds an identity; use another directory", opts.Dir)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	dpopKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writePrivate(filepath.Join(opts.Dir, KeyFile), key); err != nil {
		return nil, err
	}
	if err := writePrivate(filepath.Join(opts.Dir, DPoPKeyFile), dpopKey); err != nil {
		return nil, err
	}
	pubJWK, _, err := jwt.PublicJWK(dpopKey.Public(), "", "", "")
	if err != nil {
		return nil, err
	}
	jwk, err := json.Marshal(pubJWK)
	if err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(opts.Dir, DPoPJWKFile), jwk, 0o644); err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	spkiSum := sha256.Sum256(spki)
	pop, err := SignMessage(key, []byte("enrollment-pop:v1|"+hex.EncodeToString(spkiSum[:])))
	if err != nil {
		return nil, err
	}
	body, _ := json.Marshal(map[string]any{
		"pubkey_pem":      string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki})),
		"requester_name":  opts.Requester.Name,
		"requester_email": opts.Requester.Email,
		"reason":          opts.Requester.Reason,
		"dpop_jwk":        json.RawMessage(jwk),
		"pop_signature":   pop,
	})
	client := httpClient(opts)
	var start struct {
		SessionID     string `json:"session_id"`
		PollURL       string `json:"poll_url"`
		EnrollURL     string `json:"enroll_url"`
		PollIntervalS int    `json:"poll_interval_s"`
		ExpiresAt     string `json:"expires_at"`
	}
	if err := doJSON(ctx, client, "POST", opts.URL+"/v1/enrollment/start", nil, body, http.StatusCreated, &start); err != nil {
		return nil, fmt.Errorf("enroll: start: %w", err)
	}
	p := &Pending{SessionID: start.SessionID, PollURL: start.PollURL, EnrollURL: start.EnrollURL,
		PollInterval: time.Duration(start.PollIntervalS) * time.Second, opts: opts, key: key, client: client}
	p.ExpiresAt, _ = time.Parse(time.RFC3339, start.ExpiresAt)
	if p.PollInterval <= 0 {
		p.PollInterval = 5 * time.Second
	}
	state, _ := json.Marshal(map[string]string{"session_id": p.SessionID, "url": opts.URL})
	if err := writeFile(filepath.Join(opts.Dir, pendingFile), state, 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// Status is one poll's answer.
type Status struct {
	SessionID       string   `json:"session_id"`
	Status          string   `json:"status"`
	AgentID         string   `json:"agent_id"`
	CertPEM         string   `json:"cert_pem"`
	CAPEM           string   `json:"ca_pem"`
	Capabilities    []string `json:"capabilities"`
	RejectionReason string   `json:"rejection_reason"`
}

// Check polls the session once, with the X-Enrollment-Proof header.
func (p *Pending) Check(ctx context.Context) (*Status, error) {
	proof, err := SignMessage(p.key, []byte("enrollment-status:v1|"+p.SessionID))
	if err != nil {
		return nil, err
	}
	var st Status
	err = doJSON(ctx, p.client, "GET", p.opts.URL+"/v1/enrollment/"+p.SessionID+"/status",
		map[string]string{"X-Enrollment-Proof": proof}, nil, http.StatusOK, &st)
	return &st, err
}

// Wait polls until the session is decided and, once approved, writes the
// certificate, CA and metadata into the identity directory.
func (p *Pending) Wait(ctx context.Context) (*Identity, error) {
	for {
		st, err := p.Check(ctx)
		if err != nil {
			return nil, fmt.Errorf("enroll: status: %w", err)
		}
		switch st.Status {
		case "approved":
			return p.finish(st)
		case "rejected":
			return nil, fmt.Errorf("%w: rejected: %s", ErrNotApproved, st.RejectionReason)
		case "expired":
			return nil, fmt.Errorf("%w: the session expired before an administrator decided", ErrNotApproved)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(p.PollInterval):
		}
	}
}

func (p *Pending) finish(st *Status) (*Identity, error) {
	if st.CertPEM == "" || st.AgentID == "" {
		return nil, errors.New("enroll: approved without a certificate")
	}
	if err := writeFile(filepath.Join(p.opts.Dir, CertFile), []byte(st.CertPEM), 0o644); err != nil {
		return nil, err
	}
	if st.CAPEM != "" {
		if err := writeFile(filepath.Join(p.opts.Dir, CAFile), []byte(st.CAPEM), 0o644); err != nil {
			return nil, err
		}
	}
	meta, _ := json.MarshalIndent(map[string]any{"agent_id": st.AgentID, "capabilities": st.Capabilities,
		"site_url": p.opts.URL, "issued_at": time.Now().UTC().Format(time.RFC3339)}, "", "  ")
	if err := writeFile(filepath.Join(p.opts.Dir, MetadataFile), meta, 0o644); err != nil {
		return nil, err
	}
	os.Remove(filepath.Join(p.opts.Dir, pendingFile))
	return LoadIdentity(p.opts.Dir)
}

// LoadIdentity reads an identity directory written by an enrollment.
func LoadIdentity(dir string) (*Identity, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, err
	}
	if err := checkPrivate(filepath.Join(dir, KeyFile)); err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	id := &Identity{Dir: dir, Certificate: cert, Leaf: cert.Leaf}
	if id.Leaf == nil {
		if id.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, err
		}
	}
	var meta struct {
		AgentID      string   `json:"agent_id"`
		Capabilities []string `json:"capabilities"`
		SiteURL      string   `json:"site_url"`
	}
	if data, err := os.ReadFile(filepath.Join(dir, MetadataFile)); err == nil {
		json.Unmarshal(data, &meta)
	}
	id.AgentID, id.Capabilities, id.URL = meta.AgentID, meta.Capabilities, meta.SiteURL
	if id.DPoPKey, err = readPrivate(filepath.Join(dir, DPoPKeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if ca, err := os.ReadFile(filepath.Join(dir, CAFile)); err == nil {
		id.RootCAs = x509.NewCertPool()
		id.RootCAs.AppendCertsFromPEM(ca)
	}
	return id, nil
}

// TLSConfig returns a client TLS config presenting the agent certificate
// and trusting the Org root. Session tickets are off so that every
// connection is a full handshake in which the certificate is presented.
func (id *Identity) TLSConfig() *tls.Config {
	return &tls.Config{
		Certificates:           []tls.Certificate{id.Certificate},
		RootCAs:                id.RootCAs,
		MinVersion:             tls.VersionTLS12,
		SessionTicketsDisabled: true,
	}
}

// APIError is a non-expected answer from the Mastio.
type APIError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
	Body    string
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body)
}

func doJSON(ctx context.Context, c *http.Client, method, url string, hdr map[string]string, body []byte, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		e := &APIError{Status: resp.StatusCode, Body: string(data)}
		json.Unmarshal(data, e)
		return e
	}
	return json.Unmarshal(data, out)
}
