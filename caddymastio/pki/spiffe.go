package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

var (
	// namePattern is what an agent name or org id may look like; both are
	// path segments of the agent's SPIFFE ID.
	namePattern        = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,64}$`)
	trustDomainPattern = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)
)

// ValidateName checks an agent name (or org id): 1–64 characters of
// [a-zA-Z0-9._-], and not "." or "..".
func ValidateName(kind, s string) error {
	if !namePattern.MatchString(s) || s == "." || s == ".." {
		return fmt.Errorf("invalid %s %q: want 1-64 characters of a-z, A-Z, 0-9, '.', '_', '-'", kind, s)
	}
	return nil
}

// ValidateTrustDomain checks a SPIFFE trust domain name.
func ValidateTrustDomain(td string) error {
	if !trustDomainPattern.MatchString(td) {
		return fmt.Errorf("invalid trust domain %q: want lower-case letters, digits, '.', '_', '-'", td)
	}
	return nil
}

// AgentIdentity names an agent within an organisation and trust domain.
type AgentIdentity struct {
	TrustDomain string
	Org         string
	Name        string
}

// AgentID is the registry id "<org>::<name>".
func (a AgentIdentity) AgentID() string { return a.Org + "::" + a.Name }

// SPIFFEID is spiffe://<trust-domain>/<org>/<name>.
func (a AgentIdentity) SPIFFEID() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: a.TrustDomain, Path: "/" + a.Org + "/" + a.Name}
}

// Validate checks every part.
func (a AgentIdentity) Validate() error {
	if err := ValidateTrustDomain(a.TrustDomain); err != nil {
		return err
	}
	if err := ValidateName("org id", a.Org); err != nil {
		return err
	}
	return ValidateName("agent name", a.Name)
}

// ParseAgentID splits "<org>::<name>".
func ParseAgentID(id string) (org, name string, err error) {
	org, name, ok := strings.Cut(id, "::")
	if !ok {
		return "", "", fmt.Errorf("invalid agent id %q: want <org>::<name>", id)
	}
	if err := ValidateName("org id", org); err != nil {
		return "", "", err
	}
	if err := ValidateName("agent name", name); err != nil {
		return "", "", err
	}
	return org, name, nil
}

// AgentIdentityFromCert reads the identity from the certificate's single
// spiffe:// URI SAN.
func AgentIdentityFromCert(cert *x509.Certificate) (AgentIdentity, error) {
	var found []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		return AgentIdentity{}, fmt.Errorf("certificate has %d spiffe URI SANs, want exactly 1", len(found))
	}
	u := found[0]
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return AgentIdentity{}, errors.New("spiffe ID is not spiffe://<trust-domain>/<org>/<name>")
	}
	a := AgentIdentity{TrustDomain: u.Host, Org: parts[0], Name: parts[1]}
	return a, a.Validate()
}
