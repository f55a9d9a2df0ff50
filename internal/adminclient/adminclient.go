// Package adminclient is the operator CLI's client of a Mastio's admin
// API (/v1/admin/...): the base URL, the TLS roots to trust and the admin
// secret, and calls that turn the API's problem answers into errors that
// say what the server said.
package adminclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Environment variables read when the matching option is empty.
const (
	EnvURL    = "MASTIO_URL"
	EnvSecret = "MASTIO_ADMIN_SECRET"
)

// Options locate the admin API.
type Options struct {
	// URL is the Mastio's base URL. Default: $MASTIO_URL, else
	// https://localhost:9443.
	URL string
	// CAFile is a PEM file of the roots to trust for the Mastio's TLS
	// certificate. Default: <DataDir>/pki/org-ca.crt when it exists, else
	// the system roots.
	CAFile string
	// SecretFile holds the admin secret. Default: $MASTIO_ADMIN_SECRET,
	// else <DataDir>/admin-secret when it exists. The secret is never
	// taken from the command line, where other users could read it.
	SecretFile string
	// DataDir is the local data directory the defaults are looked up in.
	DataDir string
}

// Client calls one Mastio's admin API.
type Client struct {
	base   string
	secret string
	roots  *x509.CertPool
	http   *http.Client
}

// Roots are the roots trusted for the Mastio's certificate: those of the
// CA file, nil for the system roots.
func (c *Client) Roots() *x509.CertPool { return c.roots }

// New resolves o into a client.
func New(o Options) (*Client, error) {
	base := o.URL
	if base == "" {
		base = os.Getenv(EnvURL)
	}
	if base == "" {
		base = "https://localhost:9443"
	}
	caFile := o.CAFile
	if def := o.DataDir + "/pki/org-ca.crt"; caFile == "" && o.DataDir != "" && exists(def) {
		caFile = def
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("the CA file: %w", err)
		}
		tlsConfig.RootCAs = x509.NewCertPool()
		if !tlsConfig.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
	}
	secret, err := readSecret(o)
	if err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = tlsConfig
	return &Client{base: strings.TrimRight(base, "/"), secret: secret, roots: tlsConfig.RootCAs,
		http: &http.Client{Transport: transport, Timeout: 10 * time.Minute}}, nil
}

func readSecret(o Options) (string, error) {
	file := o.SecretFile
	if file == "" {
		if s := os.Getenv(EnvSecret); s != "" {
			return s, nil
		}
		if def := o.DataDir + "/admin-secret"; o.DataDir != "" && exists(def) {
			file = def
		}
	}
	if file == "" {
		return "", fmt.Errorf("no admin secret: set %s or give --admin-secret-file", EnvSecret)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("the admin secret file: %w", err)
	}
	s := strings.TrimSpace(string(data))
	if s == "" {
		return "", fmt.Errorf("the admin secret file %s is empty", file)
	}
	return s, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// Error is an answer other than 2xx, with the API's error code and
// message.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("the Mastio answered %d: %s", e.Status, e.Message)
	}
	return fmt.Sprintf("the Mastio answered %d %s: %s", e.Status, e.Code, e.Message)
}

// Code is the API error code of err, "" if it is not an answer.
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Call sends body (JSON; nil for none) and decodes a 2xx answer into out
// (nil: discarded).
func (c *Client) Call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	return nil
}

// Download sends body and copies a 2xx answer's body to w. An answer cut
// off before its end is an error, never a short success.
func (c *Client) Download(ctx context.Context, method, path string, body any, w io.Writer) (int64, error) {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("the answer to %s %s was cut off after %d bytes: %w", method, path, n, err)
	}
	return n, nil
}

func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Admin-Secret", c.secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var p struct {
		Code    string `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &p) != nil || p.Message == "" {
		p.Message = strings.TrimSpace(string(data))
	}
	return nil, &Error{Status: resp.StatusCode, Code: p.Code, Message: p.Message}
}
