// Command caddy is Caddy with the standard modules and every caddy-mastio
// module built in, pinned by this repository's go.mod:
//
//	go run ./cmd/caddy run --config Caddyfile.example
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-mastio/caddy-mastio"
)

func main() {
	caddycmd.Main()
}
