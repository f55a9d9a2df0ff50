package secreturl

import "testing"

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://mastio:hunter2@db:5432/m?sslmode=require&password=x": "postgres://mastio@db:5432/m",
		"redis://:s3cret@cache:6379/0":                                   "redis://@cache:6379/0",
		"redis://cache:6379/0":                                           "redis://cache:6379/0",
		"postgres://u:p@[::1":                                            "(unparseable URL)",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
