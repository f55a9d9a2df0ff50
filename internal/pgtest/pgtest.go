// Package pgtest runs a real PostgreSQL server for tests: Debian's
// postgresql binaries (.ci/run installs them), a throwaway cluster in a
// temporary directory, listening on loopback only, run as the postgres
// user when the tests run as root (PostgreSQL refuses to run as root).
// Each test gets a database of its own.
package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// Server is a running PostgreSQL cluster.
type Server struct {
	dir  string
	port int
	cmd  *exec.Cmd
}

var running *Server

// Main starts the server, runs the tests (run: m.Run, or a TestMain's
// own) and stops it. Without PostgreSQL installed, the tests that need it
// fail saying so (the others run).
func Main(run func() int) int {
	s, err := start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
	} else {
		running = s
		defer os.RemoveAll(s.dir)
		defer s.stop()
	}
	return run()
}

// URL is the admin URL of the running server's "postgres" database.
func (s *Server) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// Database creates a fresh database for t (dropped when t ends) and
// returns its URL.
func Database(t testing.TB) string {
	t.Helper()
	if running == nil {
		t.Fatal("these tests need PostgreSQL: apt-get install postgresql (.ci/run does), and run them through a TestMain that calls pgtest.Main")
	}
	b := make([]byte, 6)
	rand.Read(b)
	name := "t_" + hex.EncodeToString(b)
	admin, err := sql.Open("pgx", running.url("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", running.url("postgres"))
		if err == nil {
			admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")
			admin.Close()
		}
	})
	return running.url(name)
}

// Stop stops the server (a fault test); Restart starts it again on the
// same port and data.
func Stop(t testing.TB) {
	t.Helper()
	if err := running.stop(); err != nil {
		t.Fatal(err)
	}
}

// Restart starts the server again after Stop; it does nothing while the
// server runs (a test's cleanup may restart what the test restarted).
func Restart(t testing.TB) {
	t.Helper()
	if running.cmd != nil {
		return
	}
	if err := running.launch(); err != nil {
		t.Fatal(err)
	}
}

func binDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", fmt.Errorf("PostgreSQL is not installed (no initdb): apt-get install postgresql")
}

// as runs cmd as the postgres user when the tests run as root.
func as(cmd *exec.Cmd) (*exec.Cmd, error) {
	if os.Geteuid() != 0 {
		return cmd, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	return cmd, nil
}

func start() (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mastio-pgtest-*")
	if err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		os.Chown(dir, uid, gid)
	}
	initdb, err := as(exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(dir, "data"), "-U", "postgres",
		"--auth=trust", "--no-sync", "-E", "UTF8"))
	if err != nil {
		return nil, err
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{dir: dir, port: port}
	return s, s.launch()
}

func (s *Server) launch() error {
	bin, err := binDir()
	if err != nil {
		return err
	}
	cmd, err := as(exec.Command(filepath.Join(bin, "postgres"), "-D", filepath.Join(s.dir, "data"), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.dir, "-c", "max_connections=300"))
	if err != nil {
		return err
	}
	log, _ := os.Create(filepath.Join(os.TempDir(), fmt.Sprintf("mastio-pgtest-%d.log", s.port)))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, err := sql.Open("pgx", s.url("postgres"))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			err = db.PingContext(ctx)
			cancel()
			db.Close()
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("postgres did not accept connections in 30s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
	return nil
}

// Tool returns the path of a PostgreSQL client program of the installed
// version (pg_dump, pg_restore, psql).
func Tool(t testing.TB, name string) string {
	t.Helper()
	if bin, err := binDir(); err == nil {
		if p := filepath.Join(bin, name); exists(p) {
			return p
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if p := filepath.Join(dirs[i], name); exists(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("PostgreSQL's %s is not installed: apt-get install postgresql", name)
	return ""
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }
