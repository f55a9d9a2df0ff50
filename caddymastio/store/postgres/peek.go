package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/internal/secreturl"
)

// Peek reads, changing nothing, the config values named by keys (absent
// ones left out) and the schema version of the database at rawURL: 0 and
// no values for a database the Mastio never used. A schema newer than
// this binary's is ErrSchemaTooNew.
func Peek(ctx context.Context, rawURL string, keys ...string) (map[string]string, int, error) {
	loc := secreturl.Redact(rawURL)
	db, err := sql.Open("pgx", rawURL)
	if err != nil {
		return nil, 0, fmt.Errorf("database %s: %w", loc, err)
	}
	defer db.Close()
	var exists bool
	if err := db.QueryRowContext(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, 0, fmt.Errorf("database %s: %w", loc, err)
	}
	if !exists {
		return map[string]string{}, 0, nil
	}
	var version int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&version); err != nil {
		return nil, 0, fmt.Errorf("database %s: %w", loc, err)
	}
	if version > LatestVersion() {
		return nil, version, fmt.Errorf("%w: database %s is at schema version %d, this binary knows up to %d; "+
			"run the caddy-mastio release that wrote it, or restore a backup taken before the upgrade",
			store.ErrSchemaTooNew, loc, version, LatestVersion())
	}
	out := map[string]string{}
	for _, k := range keys {
		var v string
		switch err := db.QueryRowContext(ctx, `SELECT value FROM config WHERE key = $1`, k).Scan(&v); {
		case err == nil:
			out[k] = v
		case errors.Is(err, sql.ErrNoRows):
		default:
			return nil, version, fmt.Errorf("database %s: %w", loc, err)
		}
	}
	return out, version, nil
}
