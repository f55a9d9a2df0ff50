// Package caddymastio registers every caddy-mastio module with Caddy.
// Build Caddy with it through xcaddy:
//
//	xcaddy build v2.11.9 --with github.com/caddy-mastio/caddy-mastio
//
// or use cmd/caddy, which does the same with this module's pinned go.mod.
package caddymastio

import (
	_ "github.com/caddy-mastio/caddy-mastio/admin"
	_ "github.com/caddy-mastio/caddy-mastio/admin/admincmd"
	_ "github.com/caddy-mastio/caddy-mastio/admin/caddyadmin"
	_ "github.com/caddy-mastio/caddy-mastio/admin/dashboard"
	_ "github.com/caddy-mastio/caddy-mastio/caddymastio"
)
