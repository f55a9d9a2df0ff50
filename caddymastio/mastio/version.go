package mastio

import "runtime/debug"

const modulePath = "github.com/caddy-mastio/caddy-mastio"

// Version is the caddy-mastio module version baked into the binary.
func Version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == modulePath {
				if m.Replace != nil && m.Replace.Version != "" {
					return m.Replace.Version
				}
				return m.Version
			}
		}
		if bi.Main.Path == modulePath && bi.Main.Version != "" {
			return bi.Main.Version
		}
	}
	return "(devel)"
}
