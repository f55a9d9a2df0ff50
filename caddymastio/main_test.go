package caddymastio

import (
	"fmt"
	"os"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestMain quiets Caddy's default logger (modules provisioned directly by
// tests log through it) by loading an empty config whose default log is at
// ERROR level.
func TestMain(m *testing.M) {
	if err := quietCaddy(); err != nil {
		fmt.Fprintln(os.Stderr, "quieting logs:", err)
		os.Exit(1)
	}
	code := m.Run()
	caddy.Stop()
	os.Exit(code)
}

// quietCaddy makes the running config an empty one with ERROR logging;
// tests derive their contexts from it (see provision).
func quietCaddy() error {
	return caddy.Load([]byte(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}}}`), true)
}
