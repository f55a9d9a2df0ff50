//go:build !unix

package mastio

func writableDir(string) error { return nil }
