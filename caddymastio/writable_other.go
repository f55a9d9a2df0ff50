//go:build !unix

package caddymastio

func writableDir(string) error { return nil }
