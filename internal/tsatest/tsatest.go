// Package tsatest runs a real RFC 3161 timestamp authority for tests:
// `openssl ts -reply` behind an HTTP endpoint on loopback, with a root and
// a timestamping certificate made for the test.
package tsatest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TSA is a running timestamp authority.
type TSA struct {
	URL   string
	Roots *x509.CertPool
	// RootFile is the root, PEM, for verifiers that read a file.
	RootFile string
}

// Start runs a timestamp authority until the test ends. It fails the test
// if openssl is missing (.ci/run installs it).
func Start(t testing.TB) *TSA {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("the timestamp authority is openssl ts: install openssl (.ci/run does)")
	}
	dir := t.TempDir()
	rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test TSA Root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	tsaKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// RFC 3161 §2.3 (and openssl) want the timeStamping extended key usage
	// alone and critical; Go writes it non-critical, so it goes in raw.
	eku, _ := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	tsaTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Test TSA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: eku}}}
	tsaDER, err := x509.CreateCertificate(rand.Reader, tsaTmpl, root, tsaKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(tsaKey)
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rootFile := write("root.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}))
	write("tsa.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tsaDER}))
	write("tsa.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	write("serial", []byte("01\n"))
	cfg := write("tsa.cnf", []byte(fmt.Sprintf(`[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = %s
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
certs = $dir/root.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.99999.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
`, dir)))
	var mu sync.Mutex // openssl keeps its serial in a file
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "POST" || r.Header.Get("Content-Type") != "application/timestamp-query" {
			http.Error(w, "want a POST of application/timestamp-query", http.StatusBadRequest)
			return
		}
		query, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		mu.Lock()
		defer mu.Unlock()
		q := write("query.tsq", query)
		out := filepath.Join(dir, "reply.tsr")
		if msg, err := exec.Command("openssl", "ts", "-reply", "-config", cfg, "-queryfile", q, "-out", out).CombinedOutput(); err != nil {
			http.Error(w, fmt.Sprintf("openssl ts: %v: %s", err, msg), http.StatusInternalServerError)
			return
		}
		reply, err := os.ReadFile(out)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/timestamp-reply")
		w.Write(reply)
	}))
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(root)
	return &TSA{URL: srv.URL, Roots: pool, RootFile: rootFile}
}
