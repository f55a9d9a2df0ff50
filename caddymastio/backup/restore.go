package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"filippo.io/age"
)

// Error is a backup that cannot be restored: damaged, altered, encrypted
// to another key, or not a Mastio backup. Its message says which.
type Error struct{ Msg string }

func (e *Error) Error() string { return e.Msg }

func refuse(format string, args ...any) error { return &Error{Msg: fmt.Sprintf(format, args...)} }

// Extract decrypts the archive r with identities and writes its entries
// under dest, an empty directory: dest/data/..., dest/database/mastio.db,
// dest/config/... Every entry is checked against the manifest (name, size,
// mode, SHA-256, nothing missing, nothing extra) before Extract returns
// it; on any error dest holds a partial extraction its caller removes.
func Extract(r io.Reader, dest string, identities ...age.Identity) (*Manifest, error) {
	dec, err := decrypt(r, identities)
	if err != nil {
		return nil, err
	}
	return Read(dec, func(name string, perm os.FileMode) (io.WriteCloser, error) {
		return createFile(filepath.Join(dest, filepath.FromSlash(name)), perm)
	})
}

// Check reads a decrypted archive without keeping it: what Extract
// checks, for a backup on its way to its file.
func Check(plain io.Reader) (*Manifest, error) {
	return Read(plain, func(string, os.FileMode) (io.WriteCloser, error) { return nopCloser{io.Discard}, nil })
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func decrypt(r io.Reader, identities []age.Identity) (io.Reader, error) {
	dec, err := age.Decrypt(r, identities...)
	if err != nil {
		var nomatch *age.NoIdentityMatchError
		if errors.As(err, &nomatch) {
			return nil, refuse("the backup cannot be decrypted with the key or passphrase given (it was encrypted to another)")
		}
		return nil, refuse("not a readable age-encrypted backup: %v", err)
	}
	return dec, nil
}

// Read reads a decrypted archive, handing each entry to create, and
// checks it against its manifest, which it returns.
func Read(plain io.Reader, create func(name string, perm os.FileMode) (io.WriteCloser, error)) (*Manifest, error) {
	gz, err := gzip.NewReader(plain)
	if err != nil {
		return nil, damaged(err)
	}
	tr := tar.NewReader(gz)
	seen := map[string]File{}
	var man *Manifest
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, damaged(err)
		}
		if man != nil {
			return nil, refuse("the backup has entries after its manifest (%q)", h.Name)
		}
		if h.Typeflag != tar.TypeReg {
			return nil, refuse("the backup holds %q, which is not a regular file", h.Name)
		}
		if h.Name == ManifestName {
			if h.Size > 16<<20 {
				return nil, refuse("the backup's manifest is %d bytes", h.Size)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, damaged(err)
			}
			man = new(Manifest)
			dc := json.NewDecoder(bytes.NewReader(data))
			dc.DisallowUnknownFields()
			if err := dc.Decode(man); err != nil {
				return nil, refuse("the backup's manifest cannot be read: %v", err)
			}
			continue
		}
		if err := checkName(h.Name); err != nil {
			return nil, err
		}
		if _, dup := seen[h.Name]; dup {
			return nil, refuse("the backup holds %q twice", h.Name)
		}
		perm := os.FileMode(h.Mode).Perm()
		out, err := create(h.Name, perm)
		if err != nil {
			return nil, err
		}
		hash := sha256.New()
		n, err := io.Copy(io.MultiWriter(out, hash), tr)
		if cerr := out.Close(); err == nil && cerr != nil {
			return nil, cerr
		}
		if err != nil {
			return nil, damaged(err)
		}
		seen[h.Name] = File{Name: h.Name, Size: n, Mode: uint32(perm), SHA256: hex.EncodeToString(hash.Sum(nil))}
	}
	// tar's end is only trusted once age has authenticated the end of the
	// stream: read on until the decryptor says it is whole.
	if _, err := io.Copy(io.Discard, plain); err != nil {
		return nil, damaged(err)
	}
	if man == nil {
		return nil, refuse("the backup has no manifest: it is incomplete")
	}
	if man.Format != Format {
		return nil, refuse("the backup's format is %q; this binary reads %q", man.Format, Format)
	}
	if len(man.Files) != len(seen) {
		return nil, refuse("the backup's manifest lists %d files, the archive holds %d", len(man.Files), len(seen))
	}
	for _, want := range man.Files {
		got, ok := seen[want.Name]
		switch {
		case !ok:
			return nil, refuse("the backup's manifest lists %s, which the archive does not hold", want.Name)
		case got.Size != want.Size || got.SHA256 != want.SHA256:
			return nil, refuse("checksum mismatch: %s has SHA-256 %s, its manifest says %s", want.Name, got.SHA256, want.SHA256)
		case got.Mode != want.Mode:
			return nil, refuse("%s has mode %04o, its manifest says %04o", want.Name, got.Mode, want.Mode)
		}
	}
	return man, nil
}

func damaged(err error) error {
	return refuse("the backup is damaged or was altered (it does not decrypt whole): %v", err)
}

// checkName admits only the archive's own clean, relative names.
func checkName(name string) error {
	clean := path.Clean(name)
	if clean != name || path.IsAbs(name) || strings.HasPrefix(name, "../") || name == ".." || strings.Contains(name, `\`) ||
		!(strings.HasPrefix(name, dataPrefix) || name == DatabaseName || strings.HasPrefix(name, configPrefix)) {
		return refuse("the backup holds an entry named %q, which a Mastio backup never does", name)
	}
	return nil
}

// createFile creates a new file at p (mode perm) that is fsynced when
// closed.
func createFile(p string, perm os.FileMode) (io.WriteCloser, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return nil, err
	}
	return syncCloser{f}, nil
}

type syncCloser struct{ *os.File }

func (f syncCloser) Close() error {
	if err := f.File.Sync(); err != nil {
		f.File.Close()
		return err
	}
	return f.File.Close()
}
