package audit

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/digitorus/timestamp"
)

// BundleCheck is one check VerifyBundle made.
type BundleCheck struct {
	Name   string
	OK     bool
	Detail string
	Seq    int64 // the row that failed it, if one did
}

// BundleOptions are what the verifier trusts besides the bundle.
type BundleOptions struct {
	// Roots hold the Org root the checkpoint must chain to. nil: the root
	// in the bundle's chain.pem (reported with its fingerprint: that only
	// proves the bundle is consistent, not whose it is).
	Roots *x509.CertPool
	// TSARoots hold the timestamp authority's root. nil: a timestamp in the
	// bundle is not checked (reported).
	TSARoots *x509.CertPool
	// Witnesses are hashes known from elsewhere (seq -> hex): the rows
	// must have them.
	Witnesses map[int64]string
}

// VerifyBundle checks a bundle (see WriteBundle) with nothing else: the
// SHA-256 of every file against the manifest; the rows, walked from the
// manifest's start hash, each linked to the one before and hashed as
// stored; the checkpoint's signature, its chain to the Org root and that
// it names the last row; the timestamp over the manifest and that its
// time follows the last row; the witnesses. It returns the checks in
// order and stops at the first that fails, with the manifest once read.
// The error is for a bundle that cannot be read at all.
func VerifyBundle(r io.Reader, opts BundleOptions) (BundleResult, error) {
	v := &bundleVerifier{opts: opts}
	checks, err := v.verify(r)
	return BundleResult{Checks: checks, Manifest: v.manifest}, err
}

// BundleResult is what VerifyBundle found.
type BundleResult struct {
	Checks   []BundleCheck
	Manifest *Manifest // nil if it could not be read
}

// OK reports whether every check passed.
func (r BundleResult) OK() bool {
	_, failed := r.Failure()
	return !failed && r.Manifest != nil
}

func (v *bundleVerifier) verify(r io.Reader) ([]BundleCheck, error) {
	gz, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("not a gzip file: %w", err)
	}
	tr := tar.NewReader(gz)
	seen := map[string]bool{}
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return v.checks, fmt.Errorf("reading the tar: %w", err)
		}
		if seen[h.Name] {
			return v.fail("files", 0, "%s appears twice", h.Name), nil
		}
		seen[h.Name] = true
		switch {
		case len(seen) == 1 && h.Name != bundleManifest:
			return v.fail("manifest", 0, "the first file is %s, not %s", h.Name, bundleManifest), nil
		case h.Name == bundleEvents:
			if v.manifest == nil {
				return v.fail("manifest", 0, "no manifest before the events"), nil
			}
			if !v.walk(tr) {
				return v.checks, nil
			}
		case h.Name == bundleManifest || h.Name == bundleCheckpoint || h.Name == bundleChain || h.Name == bundleTimestamp:
			data, err := io.ReadAll(io.LimitReader(tr, maxBundleMetaFile+1))
			if err != nil {
				return v.checks, err
			}
			if len(data) > maxBundleMetaFile {
				return v.fail("files", 0, "%s is larger than %d bytes", h.Name, maxBundleMetaFile), nil
			}
			files[h.Name] = data
			if h.Name == bundleManifest && !v.readManifest(data) {
				return v.checks, nil
			}
		default:
			return v.fail("files", 0, "unexpected file %s", h.Name), nil
		}
	}
	if v.manifest == nil || !seen[bundleEvents] {
		return v.fail("files", 0, "the bundle lacks %s or %s", bundleManifest, bundleEvents), nil
	}
	for name := range v.manifest.Files {
		if name == bundleEvents {
			continue
		}
		data, ok := files[name]
		if !ok {
			return v.fail("files", 0, "%s is in the manifest, not in the bundle", name), nil
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != v.manifest.Files[name] {
			return v.fail("files", 0, "%s does not match its SHA-256 in the manifest", name), nil
		}
	}
	for name := range files {
		if _, listed := v.manifest.Files[name]; !listed && name != bundleManifest && name != bundleTimestamp {
			return v.fail("files", 0, "%s is not in the manifest", name), nil
		}
	}
	v.pass("files", "every file matches its SHA-256 in the manifest")
	if !v.checkpoint(files[bundleCheckpoint], files[bundleChain]) {
		return v.checks, nil
	}
	v.timestamp(files[bundleTimestamp], files[bundleManifest])
	return v.checks, nil
}

type bundleVerifier struct {
	opts     BundleOptions
	checks   []BundleCheck
	manifest *Manifest
	lastTime time.Time
}

func (v *bundleVerifier) pass(name, format string, args ...any) {
	v.checks = append(v.checks, BundleCheck{Name: name, OK: true, Detail: fmt.Sprintf(format, args...)})
}

func (v *bundleVerifier) fail(name string, seq int64, format string, args ...any) []BundleCheck {
	v.checks = append(v.checks, BundleCheck{Name: name, Seq: seq, Detail: fmt.Sprintf(format, args...)})
	return v.checks
}

func (v *bundleVerifier) readManifest(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		v.fail("manifest", 0, "unreadable: %v", err)
		return false
	}
	if m.Format != BundleFormat || m.FirstSeq < 1 || m.LastSeq < m.FirstSeq || m.Rows != m.LastSeq-m.FirstSeq+1 || m.Files[bundleEvents] == "" {
		v.fail("manifest", 0, "format %q, seq %d-%d, %d rows: not a whole range of a %s bundle", m.Format, m.FirstSeq, m.LastSeq, m.Rows, BundleFormat)
		return false
	}
	v.manifest = &m
	v.pass("manifest", "org %s, seq %d-%d (%d rows), created %s", m.Org, m.FirstSeq, m.LastSeq, m.Rows, m.Created)
	return true
}

// walk reads events.ndjson: its digest, and the chain from the start hash.
func (v *bundleVerifier) walk(r io.Reader) bool {
	m := v.manifest
	digest := sha256.New()
	sc := bufio.NewScanner(&teeHash{r: r, h: digest})
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	prev, err := hex.DecodeString(m.StartHash)
	if err != nil || len(prev) != 32 {
		v.fail("chain", m.FirstSeq, "the manifest's start hash is not a SHA-256 in hex")
		return false
	}
	seq := m.FirstSeq
	var calls outcomes
	for sc.Scan() {
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.DisallowUnknownFields()
		var row ExportRow
		if err := dec.Decode(&row); err != nil {
			v.fail("chain", seq, "row %d is unreadable: %v", seq, err)
			return false
		}
		if reason := checkRow(row, seq, prev); reason != "" {
			v.fail("chain", seq, "row %d: %s", seq, reason)
			return false
		}
		if w, ok := v.opts.Witnesses[seq]; ok && w != row.Hash {
			v.fail("witness", seq, "row %d has hash %s, the witness says %s", seq, row.Hash, w)
			return false
		}
		calls.see(row.Type, row.Seq, row.Details)
		prev, _ = hex.DecodeString(row.Hash)
		v.lastTime, _ = time.Parse(TimeFormat, row.Time)
		seq++
	}
	if err := sc.Err(); err != nil {
		v.fail("chain", seq, "reading the rows: %v", err)
		return false
	}
	io.Copy(io.Discard, &teeHash{r: r, h: digest}) // a digest over the whole file
	switch {
	case hex.EncodeToString(digest.Sum(nil)) != m.Files[bundleEvents]:
		v.fail("files", 0, "%s does not match its SHA-256 in the manifest", bundleEvents)
	case seq-1 != m.LastSeq:
		v.fail("chain", seq, "the rows end at seq %d, the manifest says %d", seq-1, m.LastSeq)
	case hex.EncodeToString(prev) != m.LastHash:
		v.fail("chain", m.LastSeq, "the last row's hash is not the manifest's")
	default:
		v.pass("chain", "%d rows, each linked to the one before and hashed as stored, from the start hash %.16s…", m.Rows, m.StartHash)
		if u := calls.result(); u.Count > 0 {
			v.pass("calls", "%d forwarded MCP calls with outcome unknown (their mcp.call row is not in the bundle: still at the upstream, or lost in a crash), mcp.forward seqs %v", u.Count, u.Seqs)
		}
		for s := range v.opts.Witnesses {
			if s < m.FirstSeq || s > m.LastSeq {
				v.fail("witness", s, "seq %d is not in the bundle (%d-%d)", s, m.FirstSeq, m.LastSeq)
				return false
			}
		}
		if len(v.opts.Witnesses) > 0 {
			v.pass("witness", "%d witnessed hashes match", len(v.opts.Witnesses))
		}
		return true
	}
	return false
}

// checkRow is why row is not the row seq after the row whose hash is prev
// ("" if it is).
func checkRow(row ExportRow, seq int64, prev []byte) string {
	if row.Seq != seq {
		return fmt.Sprintf("seq %d where %d was due (a row missing or out of order)", row.Seq, seq)
	}
	if row.PrevHash != hex.EncodeToString(prev) {
		return "prev_hash is not the hash of the row before"
	}
	if _, err := time.Parse(TimeFormat, row.Time); err != nil {
		return fmt.Sprintf("time %q is not in the stored format", row.Time)
	}
	want := rowHash(prev, row.Seq, row.Time, row.Type, row.Actor, row.Subject, row.Result, row.Details)
	if hex.EncodeToString(want) != row.Hash {
		return "its content does not hash to its hash (changed)"
	}
	return ""
}

type teeHash struct {
	r io.Reader
	h hash.Hash
}

func (t *teeHash) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	t.h.Write(p[:n])
	return n, err
}

// checkpoint verifies the checkpoint against the Org root and the last row.
func (v *bundleVerifier) checkpoint(jws, chainPEM []byte) bool {
	m := v.manifest
	roots := v.opts.Roots
	source := "the given Org CA"
	if roots == nil {
		root := lastCert(chainPEM)
		if root == nil {
			v.fail("checkpoint", 0, "chain.pem holds no root and no Org CA was given")
			return false
		}
		roots = x509.NewCertPool()
		roots.AddCert(root)
		sum := sha256.Sum256(root.Raw)
		source = fmt.Sprintf("the bundle's own root (SHA-256 %s: compare it with your Org CA, or pass --ca)", hex.EncodeToString(sum[:]))
	}
	c, _, err := VerifyCheckpoint(string(jws), roots)
	switch {
	case err != nil:
		v.fail("checkpoint", m.LastSeq, "%v", err)
		return false
	case c.Seq != m.LastSeq || c.Hash != m.LastHash || c.Org != m.Org:
		v.fail("checkpoint", m.LastSeq, "it names org %s seq %d hash %.16s…, the bundle ends at seq %d hash %.16s…", c.Org, c.Seq, c.Hash, m.LastSeq, m.LastHash)
		return false
	}
	v.pass("checkpoint", "signed by the Mastio of org %s at %s over seq %d, chained to %s", c.Org, c.Time, c.Seq, source)
	return true
}

func lastCert(chainPEM []byte) *x509.Certificate {
	var last *x509.Certificate
	for rest := chainPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return last
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil {
			last = c
		}
	}
}

// timestamp verifies an RFC 3161 response over the manifest.
func (v *bundleVerifier) timestamp(tsr, manifest []byte) {
	if tsr == nil {
		v.pass("timestamp", "none in the bundle (no timestamp authority configured)")
		return
	}
	ts, err := timestamp.ParseResponse(tsr)
	if err != nil {
		v.fail("timestamp", 0, "the timestamp does not verify: %v", err)
		return
	}
	// The library checks the signature only with a certificate included.
	signer := timestampSigner(ts.Certificates)
	if signer == nil {
		v.fail("timestamp", 0, "the timestamp carries no timestamping certificate: its signature cannot be checked")
		return
	}
	sum := sha256.Sum256(manifest)
	if ts.HashAlgorithm != crypto.SHA256 || !bytes.Equal(ts.HashedMessage, sum[:]) {
		v.fail("timestamp", 0, "the timestamp is over another manifest")
		return
	}
	// genTime is often to the second, and within the authority's accuracy:
	// the timestamp follows the last row unless it is earlier even then.
	if ts.Time.Add(ts.Accuracy + time.Second).Before(v.lastTime) {
		v.fail("timestamp", v.manifest.LastSeq, "the timestamp (%s) is older than the last row (%s)", ts.Time.UTC().Format(time.RFC3339), v.lastTime.Format(time.RFC3339))
		return
	}
	if v.opts.TSARoots == nil {
		v.pass("timestamp", "over the manifest at %s; its authority was not checked (pass --tsa-ca)", ts.Time.UTC().Format(time.RFC3339))
		return
	}
	inter := x509.NewCertPool()
	for _, c := range ts.Certificates {
		inter.AddCert(c)
	}
	if _, err := signer.Verify(x509.VerifyOptions{Roots: v.opts.TSARoots, Intermediates: inter, CurrentTime: ts.Time,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}}); err != nil {
		v.fail("timestamp", 0, "the timestamp authority is not trusted: %v", err)
		return
	}
	v.pass("timestamp", "by %s over the manifest at %s, after the last row", signer.Subject.CommonName, ts.Time.UTC().Format(time.RFC3339))
}

// timestampSigner is the certificate among certs that may sign timestamps.
func timestampSigner(certs []*x509.Certificate) *x509.Certificate {
	for _, c := range certs {
		for _, u := range c.ExtKeyUsage {
			if u == x509.ExtKeyUsageTimeStamping {
				return c
			}
		}
	}
	return nil
}

// Failure is the first failed check, if any.
func (r BundleResult) Failure() (BundleCheck, bool) {
	for _, c := range r.Checks {
		if !c.OK {
			return c, true
		}
	}
	return BundleCheck{}, false
}
