// Package redistest runs a real Redis server for tests: Debian's
// redis-server (.ci/run installs it), on loopback, in a temporary
// directory, without persistence, as the redis user (or nobody) when the
// tests run as root.
package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type server struct {
	dir  string
	port int
	cmd  *exec.Cmd
}

var running *server

// Main starts the server, runs run and stops it. Without redis-server
// installed, the tests that need it fail saying so.
func Main(run func() int) int {
	s, err := start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "redistest:", err)
	} else {
		running = s
		defer os.RemoveAll(s.dir)
		defer s.stop()
	}
	return run()
}

// URL is the running server's URL, with a database of its own for t
// (flushed when t ends); tests that share a Redis use the same URL.
func URL(t testing.TB) string {
	t.Helper()
	if running == nil {
		t.Fatal("these tests need Redis: apt-get install redis-server (.ci/run does), and a TestMain that calls redistest.Main")
	}
	u := fmt.Sprintf("redis://127.0.0.1:%d/0", running.port)
	t.Cleanup(func() {
		if c, err := redis.ParseURL(u); err == nil {
			rdb := redis.NewClient(c)
			rdb.FlushDB(context.Background())
			rdb.Close()
		}
	})
	return u
}

// Stop stops the server (a fault test); Restart starts it again, empty.
func Stop(t testing.TB) {
	t.Helper()
	running.stop()
}

// Restart starts the server again after Stop; it does nothing while the
// server runs.
func Restart(t testing.TB) {
	t.Helper()
	if running.cmd != nil {
		return
	}
	if err := running.launch(); err != nil {
		t.Fatal(err)
	}
}

func start() (*server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server is not installed: apt-get install redis-server")
	}
	dir, err := os.MkdirTemp("", "mastio-redistest-*")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &server{dir: dir, port: port}
	if os.Geteuid() == 0 {
		uid, gid := owner()
		os.Chown(dir, uid, gid)
	}
	return s, s.launch()
}

// owner is the user the server runs as under root: redis, else nobody.
func owner() (int, int) {
	for _, name := range []string{"redis", "nobody"} {
		if u, err := user.Lookup(name); err == nil {
			uid, _ := strconv.Atoi(u.Uid)
			gid, _ := strconv.Atoi(u.Gid)
			return uid, gid
		}
	}
	return 65534, 65534
}

func (s *server) launch() error {
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "yes")
	if os.Geteuid() == 0 {
		uid, gid := owner()
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	s.cmd = cmd
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", s.port)})
	defer rdb.Close()
	deadline := time.Now().Add(15 * time.Second)
	for rdb.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			return fmt.Errorf("redis-server did not answer in 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}
