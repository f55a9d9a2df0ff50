package mastio

import (
	"context"
	"errors"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
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

// KeyStoreUnavailable reports err as the Org CA's key store not answering
// (a sealed Vault, say), with the reason to show: the request is answered
// 503 key_store_unavailable and nothing was issued.
func KeyStoreUnavailable(err error) (reason string, ok bool) {
	if ue := pki.Unavailable(err); ue != nil {
		return ue.Reason, true
	}
	return "", false
}

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

// MigrationPlan is what opening a database with this binary would do to
// its schema.
type MigrationPlan struct {
	// Database names it (never a password).
	Database string `json:"database"`
	// Exists is false for a database the Mastio never used.
	Exists bool `json:"exists"`
	// Current is its schema version; Latest this binary's.
	Current int `json:"current"`
	Latest  int `json:"latest"`
	// Pending are the steps Open would apply, in order.
	Pending []store.Migration `json:"pending"`
	// TooNew: a newer binary wrote it; this one refuses to open it.
	TooNew bool `json:"too_new"`
}

// Plan reads, changing nothing, what opening d would do to its schema.
func (d Database) Plan(ctx context.Context) (MigrationPlan, error) {
	p := MigrationPlan{Database: d.Location()}
	var err error
	if postgres.IsURL(string(d)) {
		_, p.Current, err = postgres.Peek(ctx, string(d))
		p.Latest, p.Pending = postgres.LatestVersion(), postgres.Pending(p.Current)
	} else {
		if !hasFile(string(d)) {
			p.Latest, p.Pending = sqlite.LatestVersion(), sqlite.Pending(0)
			return p, nil
		}
		_, p.Current, err = sqlite.Peek(ctx, string(d))
		p.Latest, p.Pending = sqlite.LatestVersion(), sqlite.Pending(p.Current)
	}
	p.Exists = p.Current > 0
	if errors.Is(err, store.ErrSchemaTooNew) {
		p.TooNew, p.Pending = true, nil
		return p, nil
	}
	return p, err
}

// Migrate brings d's schema up to date (what a start does first), for an
// upgrade done while the Mastio is stopped.
func (d Database) Migrate(ctx context.Context) (MigrationPlan, error) {
	p, err := d.Plan(ctx)
	if err != nil || p.TooNew || !p.Exists {
		return p, err
	}
	st, err := d.open(ctx)
	if err != nil {
		return p, err
	}
	return p, st.Close()
}
