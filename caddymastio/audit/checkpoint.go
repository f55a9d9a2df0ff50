package audit

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// CheckpointType is the typ of a checkpoint's JWS.
const CheckpointType = "mastio-audit-checkpoint+jwt"

// A Checkpoint is the Mastio's signed statement that its audit chain had
// the row Seq with hash Hash at Time: a witness that keeps checkpoints can
// later prove that no row up to Seq was changed or dropped, and an
// archive's verifier that it holds the chain the Mastio kept.
type Checkpoint struct {
	Org  string `json:"org"`
	Seq  int64  `json:"seq"`
	Hash string `json:"hash"` // hex
	Time string `json:"time"` // RFC 3339, UTC
}

// SignCheckpoint signs c as a compact JWS (ES256) whose x5c header carries
// chain (DER, the signing certificate first, up to but not including the
// Org root).
func SignCheckpoint(key crypto.Signer, chain [][]byte, c Checkpoint) (string, error) {
	x5c := make([]string, len(chain))
	for i, der := range chain {
		x5c[i] = base64.StdEncoding.EncodeToString(der)
	}
	return jwt.Sign(key, map[string]any{"typ": CheckpointType, "x5c": x5c}, c)
}

// VerifyCheckpoint checks a checkpoint's JWS: its certificate chain leads
// to roots and was valid at the checkpoint's time, the signing certificate
// is the Mastio's audit signer for the checkpoint's org (its SPIFFE ID is
// spiffe://<trust domain>/<org>/workload/mastio-audit), and the signature
// holds. It returns the checkpoint and the chain.
func VerifyCheckpoint(token string, roots *x509.CertPool) (Checkpoint, []*x509.Certificate, error) {
	var c Checkpoint
	t, err := jwt.Parse(token)
	if err != nil {
		return c, nil, fmt.Errorf("checkpoint: %w", err)
	}
	if t.Typ != CheckpointType {
		return c, nil, fmt.Errorf("checkpoint: typ %q, want %s", t.Typ, CheckpointType)
	}
	var x5c []string
	if err := json.Unmarshal(t.Header["x5c"], &x5c); err != nil || len(x5c) == 0 {
		return c, nil, errors.New("checkpoint: no x5c certificate chain")
	}
	chain := make([]*x509.Certificate, len(x5c))
	for i, s := range x5c {
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return c, nil, fmt.Errorf("checkpoint: x5c[%d] is not base64", i)
		}
		if chain[i], err = x509.ParseCertificate(der); err != nil {
			return c, nil, fmt.Errorf("checkpoint: x5c[%d]: %w", i, err)
		}
	}
	if err := t.Verify(chain[0].PublicKey, jwt.ES256); err != nil {
		return c, nil, fmt.Errorf("checkpoint: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(t.Payload)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, nil, fmt.Errorf("checkpoint: payload: %w", err)
	}
	at, err := time.Parse(time.RFC3339Nano, c.Time)
	if err != nil {
		return c, nil, fmt.Errorf("checkpoint: time %q: %w", c.Time, err)
	}
	if h, err := hex.DecodeString(c.Hash); err != nil || len(h) != 32 || c.Seq < 0 {
		return c, nil, errors.New("checkpoint: seq or hash malformed")
	}
	inter := x509.NewCertPool()
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return c, nil, fmt.Errorf("checkpoint: the signing certificate does not chain to the Org root at %s: %w", c.Time, err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].Scheme != "spiffe" || leaf.URIs[0].Path != "/"+c.Org+"/workload/mastio-audit" {
		return c, nil, fmt.Errorf("checkpoint: signed by %v, not the audit signer of org %q", leaf.URIs, c.Org)
	}
	return c, chain, nil
}
