package mastio

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// OAuthClient has the Mastio get access tokens for an upstream MCP
// server with the OAuth 2.1 client credentials grant (RFC 6749 §4.4,
// client_secret_basic) and send them as "Authorization: Bearer". A token
// is reused until shortly before it expires, and fetched anew at once
// when the server refuses it (401).
type OAuthClient struct {
	// The authorization server's token endpoint: https, or http to a
	// loopback address.
	TokenURL string `json:"token_url"`

	// The Mastio's client id at the authorization server.
	ClientID string `json:"client_id"`

	// The client secret: a placeholder such as {env.SEARCH_OAUTH_SECRET},
	// resolved each time a token is fetched, or the secret itself.
	ClientSecret string `json:"client_secret,omitempty"`

	// Name of a key-store secret (data/keys/<name>, mode 0600) holding
	// the client secret. The admin API stores a client_secret given to it
	// this way.
	ClientSecretName string `json:"client_secret_name,omitempty"`

	// Scopes to ask for.
	Scopes []string `json:"scopes,omitempty"`

	// The resource indicator (RFC 8707) the token is asked for. Default:
	// the server's URL, as the MCP authorization spec has clients do.
	Resource string `json:"resource,omitempty"`
}

// validate checks the client's settings for server name.
func (o *OAuthClient) validate(name string) error {
	u, err := url.Parse(o.TokenURL)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))) {
		return fmt.Errorf("MCP server %s: oauth token_url %q must be an https URL (http only to a loopback address)", name, o.TokenURL)
	}
	if o.ClientID == "" {
		return fmt.Errorf("MCP server %s: oauth needs a client_id", name)
	}
	if (o.ClientSecret == "") == (o.ClientSecretName == "") {
		return fmt.Errorf("MCP server %s: oauth needs one of client_secret and client_secret_name", name)
	}
	if o.Resource != "" {
		if r, err := url.Parse(o.Resource); err != nil || !r.IsAbs() || r.Fragment != "" {
			return fmt.Errorf("MCP server %s: oauth resource %q must be an absolute URI without a fragment", name, o.Resource)
		}
	}
	for _, sc := range o.Scopes {
		if sc == "" || strings.ContainsAny(sc, " \"\\") {
			return fmt.Errorf("MCP server %s: oauth scope %q: want a scope token", name, sc)
		}
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validateAuth checks the server's credentials settings: one kind of
// Authorization.
func (s *Server) validateAuth(name string) error {
	if s.OAuth == nil {
		return nil
	}
	if err := s.OAuth.validate(name); err != nil {
		return err
	}
	_, header := s.Headers["Authorization"]
	for h := range s.Headers {
		header = header || strings.EqualFold(h, "Authorization")
	}
	if s.BearerSecret != "" || header {
		return fmt.Errorf("MCP server %s: give oauth, bearer_secret or an Authorization header, not several", name)
	}
	return nil
}

// CheckFiles checks what the server's settings name on this machine: a
// ca_file must hold PEM certificates. (Validate does not read files: a
// Caddyfile may be adapted elsewhere.)
func (s *Server) CheckFiles(name string) error {
	if s.CAFile == "" {
		return nil
	}
	if _, err := s.roots(); err != nil {
		return fmt.Errorf("MCP server %s: %w", name, err)
	}
	return nil
}

// roots are the certificates the server's own is verified with: ca_file
// if set, else nil (see Mastio.UpstreamTLS).
func (s *Server) roots() (*x509.CertPool, error) {
	if s.CAFile == "" {
		return nil, nil
	}
	data, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	certs, err := pki.ParseCertificatesPEM(data)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", s.CAFile)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// OAuthClientSecret is the client secret of o, its placeholders resolved
// by resolve.
func (m *Mastio) OAuthClientSecret(o *OAuthClient, resolve func(string) string) (string, error) {
	if o.ClientSecretName != "" {
		secret, err := m.keyStore.Load(o.ClientSecretName)
		if err != nil {
			return "", fmt.Errorf("the OAuth client secret of the MCP server: %w", err)
		}
		return strings.TrimSpace(string(secret)), nil
	}
	return resolve(o.ClientSecret), nil
}

// UpstreamTLS is the TLS client configuration for reaching the server:
// its ca_file, or the system's roots and the Org root (the organisation's
// own servers may have certificates from the Org CA); with
// client_certificate, the Mastio's workload certificate.
func (m *Mastio) UpstreamTLS(s *Server) (*tls.Config, error) {
	roots, err := s.roots()
	if err != nil {
		return nil, err
	}
	if roots == nil {
		if roots, err = x509.SystemCertPool(); err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		roots.AddCert(m.ca.Root())
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if s.ClientCertificate {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.WorkloadCertificate()
		}
	}
	return cfg, nil
}
