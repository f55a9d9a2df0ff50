package pki

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeyStore keeps private keys. Implementations must never expose a key to
// anyone but this process; the filesystem store writes mode 0600 files, a
// Vault or KMS store can replace it without the CA code changing.
type KeyStore interface {
	// Load returns the PEM-encoded private key stored under name, or an
	// error wrapping fs.ErrNotExist when there is none.
	Load(name string) ([]byte, error)
	// Store saves a PEM-encoded private key under name, replacing any
	// previous one atomically.
	Store(name string, keyPEM []byte) error
	// Delete removes the key stored under name; removing a key that is
	// not there is not an error.
	Delete(name string) error
	// String describes the store for logs and errors (never key material).
	String() string
}

// FileKeyStore stores keys as 0600 files in Dir (created 0700).
type FileKeyStore struct{ Dir string }

func (f FileKeyStore) String() string { return "file:" + f.Dir }

func (f FileKeyStore) path(name string) (string, error) {
	if name == "" || strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return "", fmt.Errorf("invalid key name %q", name)
	}
	return filepath.Join(f.Dir, name), nil
}

// Load implements KeyStore. A key file that others can read is refused:
// it may already have leaked, and silently continuing would hide that.
func (f FileKeyStore) Load(name string) ([]byte, error) {
	p, err := f.path(name)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", p, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("key %s has mode %04o: private keys must be 0600 (chmod 600 %s)", p, perm, p)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", p, err)
	}
	return data, nil
}

// Store implements KeyStore with a write to a 0600 temporary file, fsync
// and rename, so a crash leaves either the old key or the new one.
func (f FileKeyStore) Store(name string, keyPEM []byte) error {
	p, err := f.path(name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return fmt.Errorf("key store %s: %w", f.Dir, err)
	}
	return WriteFileAtomic(p, keyPEM, 0o600)
}

// Delete implements KeyStore.
func (f FileKeyStore) Delete(name string) error {
	p, err := f.path(name)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("key store %s: %w", f.Dir, err)
	}
	return nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// directory, fsyncs it, renames it into place and fsyncs the directory, so
// a reader or a crash never sees a partial file.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// MarshalPrivateKey encodes a private key as PKCS#8 PEM.
func MarshalPrivateKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey decodes a PEM private key (PKCS#8, SEC 1 or PKCS#1).
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", key)
	}
	return s, nil
}

// LoadSigner loads and parses the key called name from ks.
func LoadSigner(ks KeyStore, name string) (crypto.Signer, error) {
	data, err := ks.Load(name)
	if err != nil {
		return nil, err
	}
	s, err := ParsePrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("key %q in %s: %w", name, ks, err)
	}
	return s, nil
}

// UnavailableError is a key store that cannot answer now: a sealed or
// unreachable Vault, a token it refuses, a secret without the field. The
// CA then runs without its keys (it verifies, it issues nothing) and
// tries again, so that it recovers by itself once the store answers.
type UnavailableError struct {
	// Reason is short and names no secret (for /readyz): "Vault is sealed".
	Reason string
	// Err is the whole cause, for the log.
	Err error
}

func (e *UnavailableError) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable returns the UnavailableError in err's chain, or nil.
func Unavailable(err error) *UnavailableError {
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return ue
	}
	return nil
}

// IsNotExist reports whether err means a key or file is absent.
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
