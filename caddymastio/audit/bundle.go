package audit

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// A bundle is a .tar.gz an auditor can check with nothing else (see
// VerifyBundle):
//
//	manifest.json   Manifest: the range, its first and last seq and hash,
//	                the hash the walk starts from, the SHA-256 of every
//	                other file
//	events.ndjson   the rows, as Export writes them
//	checkpoint.jws  the Mastio's signed checkpoint of the last row
//	chain.pem       the checkpoint's signing certificate, its intermediate
//	                and the Org root
//	timestamp.tsr   with a timestamp authority: its RFC 3161 response over
//	                the SHA-256 of manifest.json
const (
	BundleFormat      = "mastio-audit-bundle/1"
	bundleManifest    = "manifest.json"
	bundleEvents      = "events.ndjson"
	bundleCheckpoint  = "checkpoint.jws"
	bundleChain       = "chain.pem"
	bundleTimestamp   = "timestamp.tsr"
	maxBundleMetaFile = 1 << 20 // every file but events.ndjson is small
)

// RangeError is a range of rows that cannot be bundled.
type RangeError struct{ Msg string }

func (e *RangeError) Error() string { return e.Msg }

// Manifest describes a bundle.
type Manifest struct {
	Format    string            `json:"format"`
	Org       string            `json:"org"`
	Created   string            `json:"created"`
	FirstSeq  int64             `json:"first_seq"`
	LastSeq   int64             `json:"last_seq"`
	Rows      int64             `json:"rows"`
	StartHash string            `json:"start_hash"` // prev_hash of the first row: where the walk starts
	LastHash  string            `json:"last_hash"`
	Files     map[string]string `json:"files"` // name -> SHA-256, hex
}

// BundleSigner signs a checkpoint of a bundle's last row; chain is the
// signing certificate's chain up to and including the Org root, in PEM.
type BundleSigner func(ctx context.Context, c Checkpoint) (jws string, chainPEM []byte, err error)

// Timestamper asks a timestamp authority for an RFC 3161 response over a
// SHA-256 digest.
type Timestamper func(ctx context.Context, digest []byte) ([]byte, error)

// WriteBundle writes a bundle of the rows from seq from to seq to (to <= 0:
// the newest) to w. The rows are spooled to a temporary file on the way
// (a tar entry needs its size first), so memory does not grow with them.
// ts may be nil.
func WriteBundle(ctx context.Context, st store.Reader, org string, from, to int64, sign BundleSigner, ts Timestamper, w io.Writer) (*Manifest, error) {
	spool, err := os.CreateTemp("", "mastio-audit-bundle-*.ndjson")
	if err != nil {
		return nil, err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	digest := sha256.New()
	out, err := Export(ctx, st, store.AuditSeqs(from, to), FormatNDJSON, io.MultiWriter(spool, digest))
	if err != nil {
		return nil, err
	}
	if out.Rows == 0 {
		return nil, &RangeError{Msg: "no audit rows in that range"}
	}
	if out.First != max(from, 1) || (to > 0 && out.Last != to) || out.Rows != out.Last-out.First+1 {
		return nil, &RangeError{Msg: fmt.Sprintf("the chain does not hold every row of seq %d-%d (%d rows from %d to %d)",
			max(from, 1), to, out.Rows, out.First, out.Last)}
	}
	m := &Manifest{Format: BundleFormat, Org: org, Created: time.Now().UTC().Format(time.RFC3339Nano), FirstSeq: out.First,
		LastSeq: out.Last, Rows: out.Rows, Files: map[string]string{bundleEvents: hex.EncodeToString(digest.Sum(nil))}}
	if err := st.AuditRows(ctx, store.AuditSeqs(out.First, out.First), func(r store.AuditRow) error {
		m.StartHash = hex.EncodeToString(r.PrevHash)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := st.AuditRows(ctx, store.AuditSeqs(out.Last, out.Last), func(r store.AuditRow) error {
		m.LastHash = hex.EncodeToString(r.Hash)
		return nil
	}); err != nil {
		return nil, err
	}
	jws, chain, err := sign(ctx, Checkpoint{Org: org, Seq: m.LastSeq, Hash: m.LastHash, Time: m.Created})
	if err != nil {
		return nil, fmt.Errorf("signing the bundle's checkpoint: %w", err)
	}
	small := map[string][]byte{bundleCheckpoint: []byte(jws), bundleChain: chain}
	for name, data := range small {
		sum := sha256.Sum256(data)
		m.Files[name] = hex.EncodeToString(sum[:])
	}
	manifest, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if ts != nil {
		sum := sha256.Sum256(manifest)
		if small[bundleTimestamp], err = ts(ctx, sum[:]); err != nil {
			return nil, fmt.Errorf("timestamping the bundle: %w", err)
		}
	}

	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	put := func(name string, size int64, body io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: time.Now(), Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := io.Copy(tw, body)
		return err
	}
	if err := put(bundleManifest, int64(len(manifest)), bytes.NewReader(manifest)); err != nil {
		return nil, err
	}
	size, err := spool.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	if err := put(bundleEvents, size, bufio.NewReaderSize(spool, 64<<10)); err != nil {
		return nil, err
	}
	for _, name := range []string{bundleCheckpoint, bundleChain, bundleTimestamp} {
		if data, ok := small[name]; ok {
			if err := put(name, int64(len(data)), bytes.NewReader(data)); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return m, gz.Close()
}
