//go:build !unix

package sqlite

import "os"

// fileID on platforms without inode numbers only tracks existence.
type fileID struct{}

func statID(path string) (fileID, error) {
	_, err := os.Stat(path)
	return fileID{}, err
}

func writable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o200 == 0 {
		return os.ErrPermission
	}
	return nil
}
