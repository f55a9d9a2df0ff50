// Package backup writes and reads a Mastio's backup: one archive with a
// consistent snapshot of the database, the data directory (the Org CA, the
// key store, the admin secret) and the configuration, with a manifest of
// SHA-256 checksums, encrypted with age (filippo.io/age) to recipients or
// a passphrase.
//
// An archive is age( gzip( tar ) ). The tar holds data/<path> for the data
// directory's files, database/mastio.db for the database snapshot (absent
// when the database is backed up apart, as Postgres is with pg_dump),
// config/<name> for configuration, and manifest.json last: it is written
// once every checksum is known, and a reader refuses an archive whose
// files and manifest differ in any way. age authenticates the whole
// stream, so a changed byte or a cut archive fails to decrypt.
package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"filippo.io/age"
)

// Format names this archive layout in the manifest.
const Format = "mastio-backup/1"

// Names inside the archive.
const (
	ManifestName = "manifest.json"
	DatabaseName = "database/mastio.db"
	dataPrefix   = "data/"
	configPrefix = "config/"
)

// Manifest describes a backup: what it holds and the facts a restore
// checks it against.
type Manifest struct {
	// Format is Format.
	Format string `json:"format"`
	// CreatedAt is when the snapshot was taken.
	CreatedAt time.Time `json:"created_at"`
	// Version is the caddy-mastio version that wrote it.
	Version string `json:"version"`
	// OrgID is the organisation's id.
	OrgID string `json:"org_id"`
	// RootSHA256 is the fingerprint of the Org CA's root certificate.
	RootSHA256 string `json:"root_sha256"`
	// Database is "sqlite" (the snapshot is database/mastio.db) or
	// "postgres" (no snapshot: back the database up with pg_dump).
	Database string `json:"database"`
	// CAKeys says where the Org CA's keys are: "file" (in the backup,
	// data/pki), "sealed" (in the database, under the key-encryption key),
	// "vault" or "pkcs11" (not in the backup: they stay where they are).
	CAKeys string `json:"ca_keys"`
	// SchemaVersion is the database's schema version.
	SchemaVersion int `json:"schema_version"`
	// AuditLastSeq and AuditLastHash are the newest audit row in the
	// snapshot (0 and "" when there is none).
	AuditLastSeq  int64  `json:"audit_last_seq"`
	AuditLastHash string `json:"audit_last_hash"`
	// Files lists every other entry of the archive with its checksum.
	Files []File `json:"files"`
}

// File is one entry of the archive.
type File struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"`
	SHA256 string `json:"sha256"`
}

// Source is what a backup is taken of.
type Source struct {
	// DataDir is the data directory; every regular file in it is backed
	// up except those Skip names.
	DataDir string
	// Skip reports data directory files (relative, slash-separated) not to
	// back up: the live database files, which Snapshot copies instead.
	Skip func(rel string) bool
	// Snapshot writes a consistent copy of the database to a new file at
	// path and returns the manifest's facts about it (Database,
	// SchemaVersion, OrgID, RootSHA256, AuditLastSeq, AuditLastHash). When
	// the database is backed up apart it writes nothing and says so with
	// Database "postgres".
	Snapshot func(ctx context.Context, path string) (Manifest, bool, error)
	// Config holds configuration documents by name (config/<name>).
	Config map[string][]byte
	// Version is the caddy-mastio version.
	Version string
}

// snapshotTries bounds how often a backup starts again because the data
// directory changed while the database was copied (a key rotated).
const snapshotTries = 5

// Write takes a backup of src and writes it to w, encrypted to
// recipients (at least one). The files of the data directory are read
// before and after the database snapshot; if they changed in between (a
// key rotation raced the backup), it starts again, so the files and the
// database always belong together.
func Write(ctx context.Context, w io.Writer, src Source, recipients ...age.Recipient) (*Manifest, error) {
	if len(recipients) == 0 {
		return nil, errors.New("backup: no recipient: a backup holds the Org CA keys and is never written unencrypted")
	}
	tmp, err := os.MkdirTemp(src.DataDir, ".backup-*")
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	defer os.RemoveAll(tmp)
	snap := filepath.Join(tmp, "snapshot.db")
	var files map[string]dataFile
	var man Manifest
	var hasDB bool
	for try := 0; ; try++ {
		before, err := readDataDir(src.DataDir, src.Skip)
		if err != nil {
			return nil, err
		}
		os.Remove(snap)
		if man, hasDB, err = src.Snapshot(ctx, snap); err != nil {
			return nil, fmt.Errorf("backup: database snapshot: %w", err)
		}
		after, err := readDataDir(src.DataDir, src.Skip)
		if err != nil {
			return nil, err
		}
		if sameFiles(before, after) {
			files = after
			break
		}
		if try+1 == snapshotTries {
			return nil, fmt.Errorf("backup: the data directory kept changing during %d snapshots; try again", snapshotTries)
		}
	}
	man.Format, man.Version, man.Files = Format, src.Version, nil
	if man.CreatedAt.IsZero() {
		man.CreatedAt = time.Now().UTC()
	}

	enc, err := age.Encrypt(w, recipients...)
	if err != nil {
		return nil, fmt.Errorf("backup: encrypting: %w", err)
	}
	gz := gzip.NewWriter(enc)
	tw := tar.NewWriter(gz)
	add := func(name string, mode os.FileMode, r io.Reader, size int64) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: int64(mode.Perm()), Size: size, ModTime: man.CreatedAt,
			Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			return err
		}
		h := sha256.New()
		n, err := io.Copy(tw, io.TeeReader(r, h))
		if err != nil {
			return err
		}
		if n != size {
			return fmt.Errorf("%s changed size while being written", name)
		}
		man.Files = append(man.Files, File{Name: name, Size: size, Mode: uint32(mode.Perm()), SHA256: hex.EncodeToString(h.Sum(nil))})
		return nil
	}
	if hasDB {
		f, err := os.Open(snap)
		if err != nil {
			return nil, fmt.Errorf("backup: %w", err)
		}
		fi, _ := f.Stat()
		err = add(DatabaseName, 0o600, f, fi.Size())
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("backup: writing %s: %w", DatabaseName, err)
		}
	}
	for _, rel := range sortedKeys(files) {
		df := files[rel]
		if err := add(dataPrefix+rel, df.mode, bytes.NewReader(df.data), int64(len(df.data))); err != nil {
			return nil, fmt.Errorf("backup: writing %s: %w", rel, err)
		}
	}
	for _, name := range sortedKeys(src.Config) {
		if err := add(configPrefix+name, 0o600, bytes.NewReader(src.Config[name]), int64(len(src.Config[name]))); err != nil {
			return nil, fmt.Errorf("backup: writing config %s: %w", name, err)
		}
	}
	mj, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Name: ManifestName, Mode: 0o600, Size: int64(len(mj)), ModTime: man.CreatedAt,
		Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return nil, fmt.Errorf("backup: writing manifest: %w", err)
	}
	if _, err := tw.Write(mj); err != nil {
		return nil, fmt.Errorf("backup: writing manifest: %w", err)
	}
	for _, c := range []io.Closer{tw, gz, enc} {
		if err := c.Close(); err != nil {
			return nil, fmt.Errorf("backup: finishing the archive: %w", err)
		}
	}
	return &man, nil
}

// dataFile is one file of the data directory, read whole (the directory
// holds certificates, keys and secrets: small files).
type dataFile struct {
	mode os.FileMode
	data []byte
}

// readDataDir reads every regular file under dir but those skip names,
// temporary files (".<name>.tmp-*") and the backup's own work.
func readDataDir(dir string, skip func(string) bool) (map[string]dataFile, error) {
	out := map[string]dataFile{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		base := path.Base(rel)
		if d.IsDir() {
			if strings.HasPrefix(base, ".backup-") || strings.HasPrefix(base, ".restore-") {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || (skip != nil && skip(rel)) || strings.Contains(base, ".tmp-") ||
			strings.HasPrefix(base, ".write-test-") || base == LockName {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = dataFile{mode: fi.Mode().Perm(), data: data}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup: reading data directory %s: %w", dir, err)
	}
	return out, nil
}

func sameFiles(a, b map[string]dataFile) bool {
	if len(a) != len(b) {
		return false
	}
	for k, fa := range a {
		if fb, ok := b[k]; !ok || !bytes.Equal(fa.data, fb.data) {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
