// Package testdb opens the embedded store for tests, with a handle of the
// test's own on the same file.
package testdb

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

// OpenSQLite opens the embedded store on a fresh file, with a handle of
// the test's own on the same file for the SQL it checks with; both close
// when the test ends.
func OpenSQLite(t testing.TB) (*sqlite.DB, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mastio.db")
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, RawSQL(t, path)
}

// RawSQL opens a handle on the database file at path for a test's own
// queries; it closes when the test ends.
func RawSQL(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
