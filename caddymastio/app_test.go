package caddymastio

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

const testSecret = "3f9c2a7d41b8e6054c1d9a2f7e8b3c61"

// loadConfig runs (or reloads) the process-wide Caddy with a config holding
// only the mastio app.
func loadConfig(t *testing.T, app map[string]any) {
	t.Helper()
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
		"apps":    map[string]any{"mastio": app},
	}
	raw, _ := json.Marshal(cfg)
	if err := caddy.Load(raw, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
}

func activeApp(t *testing.T) *App {
	t.Helper()
	v, err := caddy.ActiveContext().App("mastio")
	if err != nil {
		t.Fatal(err)
	}
	return v.(*App)
}

func TestReloadSharesOneStateAndReleasesIt(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() { quietCaddy() })
	loadConfig(t, map[string]any{"data_dir": dir, "admin_secret": testSecret})
	first := activeApp(t)
	st := first.shared

	loadConfig(t, map[string]any{"data_dir": dir, "admin_secret": testSecret, "trust_domain": "example.org"})
	second := activeApp(t)
	if second == first {
		t.Fatal("reload did not provision a new app")
	}
	if second.shared != st {
		t.Fatal("reload opened a second state (database handle and audit writer) for the same database")
	}
	if refs, _ := locations.References(first.dbPath); refs != 1 {
		t.Fatalf("pool holds %d references after the old config was cleaned up, want 1", refs)
	}
	if second.Mastio().Settings().TrustDomain != "example.org" {
		t.Fatal("new config not in force")
	}

	// Both loads are in the one chain, which verifies.
	db := readDB(t, first.dbPath)
	res, err := audit.Verify(context.Background(), sqlite.ReaderOn(db), 1, 0)
	if err != nil || !res.OK() {
		t.Fatalf("chain: %+v %v", res, err)
	}
	var loads, starts int
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'config.load'`).Scan(&loads)
	db.QueryRow(`SELECT COUNT(*) FROM audit_events WHERE event_type = 'system.start'`).Scan(&starts)
	db.Close()
	if loads != 2 || starts != 1 {
		t.Fatalf("config.load=%d system.start=%d, want 2 and 1", loads, starts)
	}

	if _, err := os.Stat(first.dbPath + "-wal"); err != nil {
		t.Fatalf("no write-ahead log while the database is open: %v", err)
	}
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	if refs, ok := locations.References(first.dbPath); ok || refs != 0 {
		t.Fatalf("state still referenced after stop: %d", refs)
	}
	// SQLite removes the write-ahead log when its last connection closes.
	if _, err := os.Stat(first.dbPath + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("database still open after the last config stopped (its -wal remains: %v)", err)
	}
}

func TestReloadsDoNotLeakGoroutines(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() { quietCaddy() })
	app := map[string]any{"data_dir": dir, "admin_secret": testSecret}
	loadConfig(t, app)
	loadConfig(t, app)
	base := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		app["trust_domain"] = "td" + string(rune('a'+i))
		loadConfig(t, app)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines grew from %d to %d over 20 reloads:\n%s", base, runtime.NumGoroutine(), buf[:n])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readDB opens a database file for the test's own queries.
func readDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// provision runs Provision on a fresh App the way Caddy would, registers
// its Cleanup, and opens its state as its Start would.
func provision(t testing.TB, a *App) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	err := a.Provision(ctx)
	t.Cleanup(func() { a.Cleanup() })
	if err != nil {
		return err
	}
	return a.ready()
}

func TestAdminSecretRules(t *testing.T) {
	t.Setenv(AdminSecretEnv, "")
	os.Unsetenv(AdminSecretEnv)
	cases := []struct {
		name, secret, env, wantErr string
	}{
		{"empty placeholder", "{env.MASTIO_TEST_UNSET_VAR}", "", "resolves to an empty value"},
		{"unknown placeholder", "{nope.nothing}", "", "resolves to an empty value"},
		{"too short", "q7w3e1r5", "", "too short"},
		{"published default", "change-me-in-production", "", "published default"},
		{"repeated", strings.Repeat("a", 20), "", "repeated"},
		{"short from env", "", "x9q2zk", "too short"},
		{"default from env", "", "CHANGE-ME-IN-PRODUCTION", "published default"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.env != "" {
				t.Setenv(AdminSecretEnv, c.env)
			}
			err := provision(t, &App{DataDir: t.TempDir(), AdminSecret: c.secret})
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, c.wantErr)
			}
			for _, s := range []string{c.secret, c.env} {
				if len(s) > 4 && !strings.HasPrefix(s, "{") && strings.Contains(err.Error(), s) {
					t.Fatalf("error message reveals the secret: %v", err)
				}
			}
		})
	}
}

func TestAdminSecretSources(t *testing.T) {
	os.Unsetenv(AdminSecretEnv)
	dir := t.TempDir()
	a := &App{DataDir: dir}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "admin-secret"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("generated secret file: %v %v", fi, err)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "admin-secret"))
	generated := strings.TrimSpace(string(data))
	if len(generated) != 64 || !a.Mastio().Settings().AdminSecret.Match(generated) || !strings.HasPrefix(a.adminSecretSource, "file ") {
		t.Fatalf("generated secret: len %d source %q", len(generated), a.adminSecretSource)
	}
	b := &App{DataDir: dir}
	if err := provision(t, b); err != nil || !b.Mastio().Settings().AdminSecret.Match(generated) {
		t.Fatalf("second start did not reuse the generated secret: %v", err)
	}

	t.Setenv(AdminSecretEnv, testSecret)
	c := &App{DataDir: dir}
	if err := provision(t, c); err != nil || !c.Mastio().Settings().AdminSecret.Match(testSecret) || c.adminSecretSource != "env "+AdminSecretEnv {
		t.Fatalf("env secret: %v %q", err, c.adminSecretSource)
	}
	t.Setenv("MASTIO_TEST_SECRET", "9b1e5c0d7a3f4e2b8c6d1a0f5e3b7c9d")
	d := &App{DataDir: dir, AdminSecret: "{env.MASTIO_TEST_SECRET}"}
	if err := provision(t, d); err != nil || !d.Mastio().Settings().AdminSecret.Match("9b1e5c0d7a3f4e2b8c6d1a0f5e3b7c9d") ||
		d.adminSecretSource != "config" {
		t.Fatalf("placeholder secret: %v %q", err, d.adminSecretSource)
	}
}

func TestOrgIDIsFixedAtFirstStart(t *testing.T) {
	dir := t.TempDir()
	a := &App{DataDir: dir, OrgID: "acme", AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	if a.Mastio().OrgID() != "acme" || a.Mastio().CA().Root().Subject.Organization[0] != "acme" {
		t.Fatalf("org id %q, root O=%v", a.Mastio().OrgID(), a.Mastio().CA().Root().Subject.Organization)
	}
	a.Cleanup()
	b := &App{DataDir: dir, OrgID: "globex", AdminSecret: testSecret}
	if err := provision(t, b); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Fatalf("changed org_id: %v", err)
	}
	c := &App{DataDir: dir, AdminSecret: testSecret} // omitted: the stored one applies
	if err := provision(t, c); err != nil || c.Mastio().OrgID() != "acme" {
		t.Fatalf("omitted org_id: %v %q", err, c.Mastio().OrgID())
	}
}

func TestDerivedOrgIDIsStable(t *testing.T) {
	dir := t.TempDir()
	a := &App{DataDir: dir, AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	org := a.Mastio().OrgID()
	if len(org) != 16 {
		t.Fatalf("derived org id %q", org)
	}
	a.Cleanup()
	b := &App{DataDir: dir, AdminSecret: testSecret}
	if err := provision(t, b); err != nil || b.Mastio().OrgID() != org {
		t.Fatalf("org id changed across starts: %q -> %q (%v)", org, b.Mastio().OrgID(), err)
	}
}

func TestMissingOrMismatchedCAIsRefused(t *testing.T) {
	dir := t.TempDir()
	a := &App{DataDir: dir, AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	a.Cleanup()

	// The CA directory vanished: refuse, and do not generate a new root.
	pkiDir := filepath.Join(dir, "pki")
	os.Rename(pkiDir, pkiDir+".bak")
	b := &App{DataDir: dir, AdminSecret: testSecret}
	if err := provision(t, b); err == nil || !strings.Contains(err.Error(), "refusing to generate a new CA") {
		t.Fatalf("missing CA: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pkiDir, "org-ca.crt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a new root was generated although the database belongs to another one")
	}
	os.RemoveAll(pkiDir)
	os.Rename(pkiDir+".bak", pkiDir)

	// Another installation's CA next to this database: refuse.
	other := t.TempDir()
	c := &App{DataDir: other, AdminSecret: testSecret}
	if err := provision(t, c); err != nil {
		t.Fatal(err)
	}
	c.Cleanup()
	os.RemoveAll(filepath.Join(other, "pki"))
	copyDir(t, pkiDir, filepath.Join(other, "pki"))
	d := &App{DataDir: other, AdminSecret: testSecret}
	if err := provision(t, d); err == nil || !strings.Contains(err.Error(), "not the one the database") {
		t.Fatalf("mismatched CA: %v", err)
	}
}

// TestLostDatabaseIsRefused: a missing or empty database beside an Org CA
// is not silently replaced by a new one (new signing key, audit seq 1,
// every agent orphaned); init-database starts over explicitly.
func TestLostDatabaseIsRefused(t *testing.T) {
	dir := t.TempDir()
	a := &App{DataDir: dir, AdminSecret: testSecret}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	org := a.Mastio().OrgID()
	a.Cleanup()
	db := filepath.Join(dir, "mastio.db")
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		os.Remove(f)
	}
	for _, c := range []struct {
		name string
		lose func()
	}{
		{"missing", func() { os.Remove(db) }},
		{"empty", func() { os.WriteFile(db, nil, 0o600) }},
		{"another", func() { os.Remove(db); st, _ := sqlite.Open(context.Background(), db); st.Close() }},
	} {
		name := c.name
		c.lose()
		b := &App{DataDir: dir, AdminSecret: testSecret}
		err := provision(t, b)
		if err == nil || !strings.Contains(err.Error(), "missing or empty") || !strings.Contains(err.Error(), "caddy mastio init-database") {
			t.Fatalf("%s database: %v", name, err)
		}
		if fi, err := os.Stat(db); err == nil && fi.Size() > 0 && name != "another" {
			t.Fatalf("%s database: a database was created", name)
		}
	}
	os.Remove(db)
	got, err := mastio.InitDatabase(context.Background(), dir, mastio.Database(db))
	if err != nil || got != org {
		t.Fatalf("init-database: %q %v (org %q)", got, err, org)
	}
	if _, err := mastio.InitDatabase(context.Background(), dir, mastio.Database(db)); err == nil {
		t.Fatal("init-database ran twice over one installation")
	}
	c := &App{DataDir: dir, AdminSecret: testSecret}
	if err := provision(t, c); err != nil {
		t.Fatalf("start after init-database: %v", err)
	}
	if c.Mastio().OrgID() != org {
		t.Fatalf("org id %q after init-database, was %q", c.Mastio().OrgID(), org)
	}
	var first string
	rdb := readDB(t, c.dbPath)
	rdb.QueryRow(`SELECT event_type FROM audit_events WHERE seq = 1`).Scan(&first)
	if first != "system.database_created" {
		t.Fatalf("the new chain begins with %q", first)
	}
}

func TestDataDirProblemsAreReported(t *testing.T) {
	file := filepath.Join(t.TempDir(), "plain-file")
	os.WriteFile(file, nil, 0o600)
	a := &App{DataDir: filepath.Join(file, "data"), AdminSecret: testSecret}
	if err := provision(t, a); err == nil || !strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("data_dir under a file: %v", err)
	}
	b := &App{DataDir: file, AdminSecret: testSecret}
	if err := provision(t, b); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("data_dir is a file: %v", err)
	}
	// A Postgres server that cannot be reached: refused at provisioning,
	// naming the database without its password.
	c := &App{DataDir: t.TempDir(), Database: "postgres://x:hunter2-secret@127.0.0.1:1/db", AdminSecret: testSecret}
	if err := provision(t, c); err == nil || !strings.Contains(err.Error(), "postgres://x@127.0.0.1:1/db") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("an unreachable postgres URL: %v", err)
	}
}

func TestStaticValidation(t *testing.T) {
	bad := []App{
		{OrgID: "a b"},
		{TrustDomain: "Upper.Case"},
		{PublicURL: "ftp://x"},
		{PublicURL: "https://x/path"},
		{PublicURL: "https://user@x"},
		{AdminSecret: "short"},
	}
	for _, a := range bad {
		if err := a.Validate(); err == nil {
			t.Errorf("%+v: accepted", a)
		}
	}
	good := App{OrgID: "acme", TrustDomain: "acme.internal", PublicURL: "https://Mastio.Example.com:9443/", AdminSecret: "{env.X}"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	u, _ := parsePublicURL(good.PublicURL)
	if u.String() != "https://mastio.example.com:9443" {
		t.Fatalf("normalised public URL %q", u)
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	os.MkdirAll(to, 0o700)
	entries, _ := os.ReadDir(from)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		os.WriteFile(filepath.Join(to, e.Name()), data, info.Mode().Perm())
	}
}

// tree lists the files under dir with their sizes and times.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			out[p] = fmt.Sprint(fi.Size(), fi.ModTime().UnixNano(), fi.Mode())
		}
		return nil
	})
	return out
}

// TestProvisionWritesNothing: provisioning a config (what caddy validate
// does) creates no CA, keys, secret, database or audit row; the state is
// written when it opens (at Start).
func TestProvisionWritesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	a := &App{DataDir: dir}
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Mastio().CA() == nil || a.Mastio().CA().Root() == nil || a.Mastio().OrgID() == "" {
		t.Fatal("provisioning does not give the CA and org id other modules need")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("provisioning created the data directory: %v", err)
	}
	a.Cleanup()
	cancel()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cleanup created the data directory: %v", err)
	}

	// On an installed data directory: nothing changes either.
	b := &App{DataDir: dir}
	if err := provision(t, b); err != nil {
		t.Fatal(err)
	}
	org := b.Mastio().OrgID()
	b.Cleanup()
	before := tree(t, dir)
	if len(before) < 8 {
		t.Fatalf("an opened state wrote too little: %v", before)
	}
	c := &App{DataDir: dir}
	ctx, cancel = caddy.NewContext(caddy.ActiveContext())
	if err := c.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Mastio().OrgID() != org {
		t.Fatalf("org id %q, was %q", c.Mastio().OrgID(), org)
	}
	c.Cleanup()
	cancel()
	after := tree(t, dir)
	for p, v := range after {
		// SQLite's readers keep their index in the -shm file (and may
		// touch the -wal): bookkeeping of the read, not content.
		if strings.HasSuffix(p, "-shm") || strings.HasSuffix(p, "-wal") || p == dir {
			continue
		}
		if before[p] != v {
			t.Errorf("provisioning changed %s", p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("provisioning removed %s", p)
		}
	}
}
