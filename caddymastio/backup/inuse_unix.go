//go:build unix

package backup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockName is the file a running Mastio holds a shared lock on in its data
// directory, so that a restore can tell the directory is in use.
const LockName = ".in-use"

// MarkInUse takes a shared lock on dir's lock file for as long as the
// returned release is not called. Several holders may share a directory
// (two configurations of one process); a restore needs it free.
func MarkInUse(dir string) (release func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, LockName), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("data_dir %s: locking %s: %w", dir, LockName, err)
	}
	return func() { f.Close() }, nil
}

// InUse reports whether a running Mastio holds dir; when it does not, the
// returned release keeps it so (an exclusive lock) until called.
func InUse(dir string) (inUse bool, release func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, LockName), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return false, nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return true, nil, nil
		}
		return false, nil, err
	}
	return false, func() { f.Close() }, nil
}
