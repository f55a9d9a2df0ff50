package mastio

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"time"

	"github.com/digitorus/timestamp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// AuditBundle writes a bundle of the audit rows from seq from to seq to
// (see audit.WriteBundle): signed with the Mastio's audit signer, and
// timestamped when a timestamp authority is configured. The bundle is
// recorded (audit.bundled) once written.
func (m *Mastio) AuditBundle(ctx context.Context, from, to int64, w io.Writer, details map[string]any) (*audit.Manifest, error) {
	var ts audit.Timestamper
	if m.cfg.TimestampURL != "" {
		ts = m.timestamp
	}
	anchor, err := m.store.AuditAnchor(ctx)
	if err != nil {
		return nil, err
	}
	if anchor.Seq > 0 && ((from > 0 && from <= anchor.Seq) || (to > 0 && to <= anchor.Seq)) {
		return nil, &audit.RangeError{Msg: fmt.Sprintf("the rows up to seq %d were archived at %s (archive SHA-256 %s)",
			anchor.Seq, anchor.ArchivedAt, anchor.ArchiveSHA256)}
	}
	man, err := audit.WriteBundle(ctx, m.store, m.orgID, max(from, anchor.Seq+1), to, m.signCheckpoint, ts, w)
	if err != nil {
		return nil, err
	}
	d := mergeMaps(map[string]any{"first_seq": man.FirstSeq, "last_seq": man.LastSeq, "rows": man.Rows, "last_hash": man.LastHash,
		"timestamped": ts != nil}, details)
	if _, err := m.audit.Append(context.WithoutCancel(ctx), audit.Event{Type: "audit.bundled", Actor: ActorOf(ctx), Subject: "audit", Details: d}); err != nil {
		return nil, err
	}
	return man, nil
}

// signCheckpoint signs a checkpoint with the Mastio's audit signer (an
// audit.BundleSigner); the chain runs to the Org root.
func (m *Mastio) signCheckpoint(_ context.Context, c audit.Checkpoint) (string, []byte, error) {
	cert, err := m.workloadCertificate(workloadAudit, nil)
	if err != nil {
		return "", nil, err
	}
	jws, err := audit.SignCheckpoint(cert.PrivateKey.(crypto.Signer), cert.Certificate, c)
	if err != nil {
		return "", nil, err
	}
	var chain bytes.Buffer
	for _, der := range cert.Certificate {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	chain.Write(m.ca.RootPEM())
	return jws, chain.Bytes(), nil
}

// timestamp asks the configured timestamp authority (RFC 3161 over HTTP)
// for a timestamp of digest, with a nonce and its certificate, and checks
// the answer is for this request.
func (m *Mastio) timestamp(ctx context.Context, digest []byte) ([]byte, error) {
	nonce, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	req, err := (&timestamp.Request{HashAlgorithm: crypto.SHA256, HashedMessage: digest, Certificates: true, Nonce: nonce}).Marshal()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, "POST", m.cfg.TimestampURL, bytes.NewReader(req))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/timestamp-query")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("the timestamp authority answered %s: %.200q", resp.Status, body)
	}
	ts, err := timestamp.ParseResponse(body)
	if err != nil {
		return nil, fmt.Errorf("the timestamp authority's answer: %w", err)
	}
	if !bytes.Equal(ts.HashedMessage, digest) || ts.Nonce == nil || ts.Nonce.Cmp(nonce) != 0 {
		return nil, fmt.Errorf("the timestamp authority answered for another request")
	}
	return body, nil
}

// AuditSeqRange is the seq range of the rows whose time is in [since,
// before) (zero times: unbounded); 0, 0 when there is none.
func (m *Mastio) AuditSeqRange(ctx context.Context, since, before time.Time) (from, to int64, err error) {
	err = m.store.AuditRows(ctx, store.AuditFilter{Since: since, Before: before}, func(r store.AuditRow) error {
		if from == 0 {
			from = r.Seq
		}
		to = r.Seq
		return nil
	})
	return from, to, err
}
