package mastio

import (
	"context"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/postgres"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
	"github.com/caddy-mastio/caddy-mastio/internal/secreturl"
)

// Database names where the store lives: a SQLite file path, or a
// postgres:// URL (which may hold a password: only Location is ever shown).
type Database string

// Location is the database for logs, errors and the audit log: the file
// path, or the URL without its password.
func (d Database) Location() string {
	if postgres.IsURL(string(d)) {
		return secreturl.Redact(string(d))
	}
	return string(d)
}

// Unavailable reports whether err is the database being unreachable or
// unusable: the request is answered 503 database_unavailable, nothing
// changed.
func Unavailable(err error) bool { return store.Unavailable(err) || postgres.IsUnavailable(err) }

// sharable reports a database several instances can share.
func (d Database) sharable() bool { return postgres.IsURL(string(d)) }

// open opens (creating the schema as needed) the store.
func (d Database) open(ctx context.Context) (store.Store, error) {
	if postgres.IsURL(string(d)) {
		return postgres.Open(ctx, string(d))
	}
	return sqlite.Open(ctx, string(d))
}

// peek reads config values of the database, changing nothing; exists is
// false for a database the Mastio never used (no file, or an empty
// Postgres database).
func (d Database) peek(ctx context.Context, keys ...string) (values map[string]string, exists bool, err error) {
	if postgres.IsURL(string(d)) {
		values, version, err := postgres.Peek(ctx, string(d), keys...)
		return values, version > 0, err
	}
	if !hasFile(string(d)) {
		return map[string]string{}, false, nil
	}
	values, _, err = sqlite.Peek(ctx, string(d), keys...)
	return values, true, err
}
