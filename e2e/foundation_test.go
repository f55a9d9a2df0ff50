package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

// openDB opens the server's database read-only from the test.
func openDB(t testing.TB, dataDir string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, "mastio.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func eventCounts(t testing.TB, db *sql.DB) map[string]int {
	t.Helper()
	rows, err := db.Query(`SELECT event_type, COUNT(*) FROM audit_events GROUP BY event_type`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		rows.Scan(&k, &n)
		out[k] = n
	}
	return out
}

func verifyChain(t testing.TB, db *sql.DB) int64 {
	t.Helper()
	res, err := audit.Verify(context.Background(), sqlite.ReaderOn(db), 1, 0)
	if err != nil || !res.OK() {
		t.Fatalf("audit chain does not verify: %+v %v", res, err)
	}
	return res.Checked
}

func fileMode(t testing.TB, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestFirstStartServesAndSecondStartReuses(t *testing.T) {
	dir := workDir(t)
	s := newServer(t, dir, "")
	s.start()
	c := s.client()

	// ./data was created 0700 with the database and the CA material.
	if m := fileMode(t, s.dataDir); m != 0o700 {
		t.Errorf("data dir mode %04o, want 0700", m)
	}
	for _, f := range []string{"mastio.db", "pki/org-ca.key", "pki/intermediate.key", "admin-secret"} {
		if m := fileMode(t, filepath.Join(s.dataDir, f)); m != 0o600 {
			t.Errorf("%s mode %04o, want 0600", f, m)
		}
	}
	keys, _ := filepath.Glob(filepath.Join(s.dataDir, "keys", "signing-*.key"))
	if len(keys) != 1 || fileMode(t, keys[0]) != 0o600 {
		t.Errorf("signing keys %v", keys)
	}

	code, _, body := s.get(c, "/healthz")
	if code != 200 || strings.TrimSpace(body) != `{"status":"ok"}` {
		t.Fatalf("healthz: %d %s", code, body)
	}
	code, _, body = s.get(c, "/readyz")
	if code != 200 || strings.TrimSpace(body) != `{"status":"ready","checks":{"audit_chain":"ok","database":"ok","pki":"ok","signing_keys":"ok"}}` {
		t.Fatalf("readyz: %d %s", code, body)
	}
	code, hdr, body := s.get(c, "/pki/ca.crt")
	onDisk, _ := os.ReadFile(filepath.Join(s.dataDir, "pki", "org-ca.crt"))
	if code != 200 || body != string(onDisk) || hdr.Get("ETag") == "" || !strings.Contains(hdr.Get("Cache-Control"), "max-age") {
		t.Fatalf("ca.crt: %d etag=%q cc=%q", code, hdr.Get("ETag"), hdr.Get("Cache-Control"))
	}
	if code, _, _ := s.get(c, "/pki/ca.crt", "If-None-Match", hdr.Get("ETag")); code != 304 {
		t.Fatalf("ca.crt revalidation: %d", code)
	}

	// The server certificate chains to that root through the intermediate
	// and names localhost (the client above already verified it).
	conn, err := tls.Dial("tcp", fmt.Sprintf("localhost:%d", s.httpsPort), &tls.Config{RootCAs: s.rootPool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	st := conn.ConnectionState()
	conn.Close()
	leaf := st.PeerCertificates[0]
	if len(st.VerifiedChains[0]) != 3 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Fatalf("server chain length %d, EKU %v", len(st.VerifiedChains[0]), leaf.ExtKeyUsage)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < 364*24*time.Hour {
		t.Errorf("server certificate lifetime %v, want a year", d)
	}
	rootSum := sha256.Sum256(onDisk)
	secret, _ := os.ReadFile(filepath.Join(s.dataDir, "admin-secret"))

	s.stop()
	if strings.Contains(s.out.String(), strings.TrimSpace(string(secret))) {
		t.Fatal("the admin secret appears in the logs")
	}
	if !strings.Contains(s.out.String(), `"msg":"mastio ready"`) {
		t.Errorf("no structured start-up log line:\n%s", s.out)
	}

	// Second start: same CA, same org id, same admin secret.
	s.start()
	again, _ := os.ReadFile(filepath.Join(s.dataDir, "pki", "org-ca.crt"))
	if sha256.Sum256(again) != rootSum {
		t.Fatal("the Org CA changed across restarts")
	}
	_, _, served := s.get(s.client(), "/pki/ca.crt")
	if served != string(onDisk) {
		t.Fatal("served root changed across restarts")
	}
	secret2, _ := os.ReadFile(filepath.Join(s.dataDir, "admin-secret"))
	if string(secret2) != string(secret) {
		t.Fatal("the generated admin secret changed across restarts")
	}
	// Stop the second run through the admin API, as `caddy stop` does.
	if out, err := s.runCaddy("stop", "--address", s.adminAddr); err != nil {
		t.Fatalf("caddy stop: %v\n%s", err, out)
	}
	s.waitExit()

	db := openDB(t, s.dataDir)
	counts := eventCounts(t, db)
	want := map[string]int{"pki.org_ca_created": 1, "token.signing_key_created": 1, "system.start": 2,
		"config.load": 2, "system.stop": 2, "pki.server_cert_issued": 1}
	for k, v := range want {
		if counts[k] != v {
			t.Errorf("audit %s: %d rows, want %d (all: %v)", k, counts[k], v, counts)
		}
	}
	verifyChain(t, db)
	var org1 string
	db.QueryRow(`SELECT value FROM config WHERE key = 'org_id'`).Scan(&org1)
	leafRoot := st.VerifiedChains[0][2]
	spki := sha256.Sum256(leafRoot.RawSubjectPublicKeyInfo)
	if org1 != hex.EncodeToString(spki[:])[:16] {
		t.Fatalf("org id %q is not derived from the root SPKI", org1)
	}
}

func TestReadyzReportsDatabaseFaultsAndRecovers(t *testing.T) {
	dir := workDir(t)
	s := newServer(t, dir, "")
	s.start()
	c := s.client()
	db := filepath.Join(s.dataDir, "mastio.db")

	expect := func(what string, code int, inBody ...string) {
		t.Helper()
		var last string
		waitFor(t, what, 15*time.Second, func() bool {
			got, _, body := s.get(c, "/readyz")
			last = fmt.Sprint(got, " ", body)
			return got == code && contains(body, inBody...)
		})
		_ = last
	}

	// Read-only database file (permission drift).
	os.Chmod(db, 0o400)
	expect("readyz 503 on a read-only database", 503, `"database":"error"`, `"reasons":{"database":"not_writable"}`, `"pki":"ok"`)
	os.Chmod(db, 0o600)
	expect("readyz recovery after chmod 600", 200, `"status":"ready"`)

	// Database file moved away under the running process.
	os.Rename(db, db+".aside")
	expect("readyz 503 on a missing database", 503, `"database":"error"`, `"database":"missing"`)
	os.Rename(db+".aside", db)
	expect("readyz recovery after the file is back", 200, `"status":"ready"`)

	// The failure and the recovery were logged with the path and cause.
	out := s.out.String()
	if !contains(out, `"msg":"readiness check failing"`, `"check":"database"`, db) || !contains(out, `"msg":"readiness check recovered"`) {
		t.Fatalf("readiness transitions not logged:\n%s", out)
	}
}

func TestAdaptedJSONRunsIdentically(t *testing.T) {
	dir := workDir(t)
	s := newServer(t, dir, "")
	out, err := s.runCaddy("adapt", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile")
	if err != nil {
		t.Fatalf("caddy adapt: %v\n%s", err, out)
	}
	adapted := out[strings.Index(out, "{"):]
	writeFile(t, filepath.Join(dir, "x.json"), adapted)

	s.start()
	_, fromCaddyfile := s.admin("GET", "/config/", nil)
	_, _, ca1 := s.get(s.client(), "/pki/ca.crt")
	s.stop()

	s.configArgs = []string{"--config", filepath.Join(dir, "x.json")}
	s.start()
	_, fromJSON := s.admin("GET", "/config/", nil)
	code, _, ready := s.get(s.client(), "/readyz")
	_, _, ca2 := s.get(s.client(), "/pki/ca.crt")
	if code != 200 || !strings.Contains(ready, `"status":"ready"`) || ca1 != ca2 {
		t.Fatalf("JSON config run: readyz %d %s, same CA %v", code, ready, ca1 == ca2)
	}
	if strings.TrimSpace(fromCaddyfile) != strings.TrimSpace(fromJSON) {
		t.Fatalf("running configs differ:\ncaddyfile: %s\njson:      %s", fromCaddyfile, fromJSON)
	}
}

func TestValidateReportsBadConfig(t *testing.T) {
	dir := workDir(t)
	s := newServer(t, dir, "")
	blocker := filepath.Join(dir, "blocker")
	writeFile(t, blocker, "")
	cases := []struct {
		name, caddyfile string
		want            []string
	}{
		{"unknown option", "{\n\tmastio {\n\t\tdata_dri ./data\n\t}\n}\n", []string{`unrecognized mastio option`, `data_dri`, "bad.caddyfile:3"}},
		{"bad duration", "{\n\tmastio\n}\nlocalhost:1 {\n\ttls {\n\t\tissuer mastio {\n\t\t\tlifetime 90x\n\t\t}\n\t}\n}\n", []string{`lifetime`, `90x`, "bad.caddyfile:7"}},
		// Checked where the config runs (provisioning), not when it is adapted.
		{"unwritable data dir", "{\n\tmastio {\n\t\tdata_dir " + blocker + "/data\n\t}\n}\n", []string{"data_dir", blocker, "not a directory"}},
		{"empty admin secret", "{\n\tmastio {\n\t\tdata_dir " + filepath.Join(dir, "d1") + "\n\t\tadmin_secret {env.MASTIO_UNSET_SECRET}\n\t}\n}\n", []string{"admin_secret", "empty value", "{env.MASTIO_UNSET_SECRET}"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			writeFile(t, filepath.Join(dir, "bad.caddyfile"), c.caddyfile)
			out, err := s.runCaddy("validate", "--config", filepath.Join(dir, "bad.caddyfile"), "--adapter", "caddyfile")
			if err == nil {
				t.Fatalf("caddy validate accepted it:\n%s", out)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Fatalf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	out, err := s.runCaddy("validate", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("Caddyfile.example does not validate: %v\n%s", err, out)
	}
	// Validating created nothing: no data directory, no CA, no secret.
	if _, err := os.Stat(s.dataDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("caddy validate created %s: %v", s.dataDir, err)
	}
	// Nor does it change an installation: no audit row, no new file.
	s.start()
	s.stop()
	db := openDB(t, s.dataDir)
	rows := eventCounts(t, db)
	db.Close()
	files := listFiles(t, s.dataDir)
	if out, err := s.runCaddy("validate", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile"); err != nil {
		t.Fatalf("validate an installation: %v\n%s", err, out)
	}
	db = openDB(t, s.dataDir)
	if after := eventCounts(t, db); fmt.Sprint(after) != fmt.Sprint(rows) {
		t.Fatalf("caddy validate wrote audit rows: %v, was %v", after, rows)
	}
	if after := listFiles(t, s.dataDir); strings.Join(after, " ") != strings.Join(files, " ") {
		t.Fatalf("caddy validate changed the files: %v, was %v", after, files)
	}
}

// listFiles lists the files under dir but SQLite's -wal and -shm (its
// readers' bookkeeping) and Caddy's own storage.
func listFiles(t testing.TB, dir string) []string {
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && !strings.HasSuffix(p, "-wal") && !strings.HasSuffix(p, "-shm") &&
			!strings.Contains(p, string(filepath.Separator)+"caddy"+string(filepath.Separator)) {
			out = append(out, strings.TrimPrefix(p, dir)+fmt.Sprintf(":%d", fi.Size()))
		}
		return nil
	})
	return out
}

func TestReloadKeepsServingAndLosesNothing(t *testing.T) {
	dir := workDir(t)
	s := newServer(t, dir, "")
	s.start()

	var failures atomic.Int64
	var requests atomic.Int64
	var retries atomic.Int64
	var failMsg atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(fresh bool) {
			defer wg.Done()
			c := s.client()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if fresh {
					c.CloseIdleConnections() // new handshakes during the reload too
				}
				resp, err := c.Get(s.url("/readyz"))
				if err != nil {
					// An idle keep-alive connection of the old server can be
					// closed by the reload just as a request is sent on it;
					// clients retry that on a new connection.
					retries.Add(1)
					resp, err = c.Get(s.url("/readyz"))
				}
				requests.Add(1)
				if err != nil || resp.StatusCode != 200 {
					failures.Add(1)
					failMsg.Store(fmt.Sprint(err, resp))
				}
				if resp != nil {
					resp.Body.Close()
				}
			}
		}(i%2 == 0)
	}

	base, _ := os.ReadFile(filepath.Join(dir, "Caddyfile"))
	for i := 0; i < 3; i++ {
		changed := strings.Replace(string(base), "trust_domain mastio.local", fmt.Sprintf("trust_domain reload%d.local", i), 1)
		writeFile(t, filepath.Join(dir, "Caddyfile"), changed)
		if out, err := s.runCaddy("reload", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile", "--address", s.adminAddr); err != nil {
			t.Fatalf("caddy reload: %v\n%s", err, out)
		}
		_, td := s.admin("GET", "/config/apps/mastio/trust_domain", nil)
		if strings.TrimSpace(td) != fmt.Sprintf(`"reload%d.local"`, i) {
			t.Fatalf("reloaded config not in force: %s", td)
		}
	}
	close(stop)
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d requests failed during reloads; last: %v", failures.Load(), requests.Load(), failMsg.Load())
	}
	s.stop()

	db := openDB(t, s.dataDir)
	counts := eventCounts(t, db)
	if counts["config.load"] != 4 || counts["system.start"] != 1 || counts["system.stop"] != 1 {
		t.Fatalf("audit after 3 reloads: %v", counts)
	}
	verifyChain(t, db)
	t.Logf("%d requests, none failed, across 3 reloads (%d retried after a connection reset)", requests.Load(), retries.Load())
}

const renewCaddyfile = `{
	admin {$MASTIO_ADMIN_ADDR}
	https_port {$MASTIO_HTTPS_PORT}
	http_port {$MASTIO_HTTP_PORT}
	auto_https disable_redirects
	storage file_system {$MASTIO_DATA_DIR}/caddy
	renew_interval 1s
	mastio {
		data_dir {$MASTIO_DATA_DIR}
	}
}

localhost:{$MASTIO_HTTPS_PORT} {
	tls {
		issuer mastio {
			lifetime 30s
		}
		renewal_window_ratio 0.8
	}
	mastio
}
`

func servedCert(t testing.TB, s *server) *x509.Certificate {
	t.Helper()
	conn, err := tls.Dial("tcp", fmt.Sprintf("localhost:%d", s.httpsPort), &tls.Config{RootCAs: s.rootPool(), ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

func TestServerCertificateRenewsAndReMints(t *testing.T) {
	dir := workDir(t)
	s := newServer(t, dir, renewCaddyfile)
	s.start()
	first := servedCert(t, s)
	if d := first.NotAfter.Sub(first.NotBefore); d > 10*time.Minute {
		t.Fatalf("lifetime option not applied: %v", d)
	}
	// Renewed by certmagic before expiry, with no action from anyone.
	var renewed *x509.Certificate
	waitFor(t, "automatic renewal of the server certificate", 60*time.Second, func() bool {
		renewed = servedCert(t, s)
		return renewed.SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if time.Now().After(first.NotAfter) {
		t.Fatal("renewed only after expiry")
	}
	s.stop()

	// Deleting the stored certificate re-mints it at the next start.
	issued, _ := filepath.Glob(filepath.Join(s.dataDir, "caddy", "certificates", "mastio-*"))
	if len(issued) != 1 {
		t.Fatalf("certificate storage: %v", issued)
	}
	if err := os.RemoveAll(issued[0]); err != nil {
		t.Fatal(err)
	}
	s.start()
	again := servedCert(t, s)
	if again.SerialNumber.Cmp(renewed.SerialNumber) == 0 || again.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("no new certificate after deleting the stored one")
	}
	s.stop()
	counts := eventCounts(t, openDB(t, s.dataDir))
	if counts["pki.server_cert_issued"] < 3 {
		t.Fatalf("server certificate issuances audited: %d, want >= 3", counts["pki.server_cert_issued"])
	}
}

// ourModules are the modules of DESIGN.md that exist so far.
var ourModules = []string{
	"mastio",
	"http.handlers.mastio",
	"http.handlers.mastio_auth",
	"http.handlers.mastio_mcp",
	"tls.issuance.mastio",
	"tls.ca_pool.source.mastio",
	"tls.client_auth.verifier.mastio",
}

func listModules(t testing.TB, bin string) []string {
	t.Helper()
	out, err := exec.Command(bin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("%s list-modules: %v\n%s", bin, err, out)
	}
	var mods []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.Contains(l, " ") {
			mods = append(mods, l)
		}
	}
	sort.Strings(mods)
	return mods
}

func TestListModulesShowsOurModules(t *testing.T) {
	mods := strings.Join(listModules(t, caddyBin), "\n") + "\n"
	for _, m := range ourModules {
		if !strings.Contains(mods, "\n"+m+"\n") && !strings.HasPrefix(mods, m+"\n") {
			t.Errorf("caddy list-modules lacks %s", m)
		}
	}
}
