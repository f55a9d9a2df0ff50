package audit_test

import "os"

func rename(a, b string) error { return os.Rename(a, b) }
