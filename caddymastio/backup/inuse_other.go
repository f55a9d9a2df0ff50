//go:build !unix

package backup

// LockName is the file a running Mastio holds a lock on in its data
// directory, so that a restore can tell the directory is in use.
const LockName = ".in-use"

// MarkInUse is a no-op where file locks are not available.
func MarkInUse(string) (func(), error) { return func() {}, nil }

// InUse cannot tell here; the operator must stop the Mastio first.
func InUse(string) (bool, func(), error) { return false, func() {}, nil }
