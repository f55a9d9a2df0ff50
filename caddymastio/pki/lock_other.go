//go:build !unix

package pki

// lockDir is a no-op where flock does not exist; run one process per data
// directory there.
func lockDir(string) (func(), error) { return func() {}, nil }
