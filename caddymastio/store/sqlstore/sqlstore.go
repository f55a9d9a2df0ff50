// Package sqlstore is every SQL statement of the Mastio's records, shared
// by the SQL stores (store/sqlite, store/postgres): the statements are
// written once, in the SQL both databases speak, with ? placeholders (a
// dialect rewrites them, see Rebind). Each store keeps what is its own:
// opening, the schema and its migrations, transactions and their locking,
// the audit writer's durability, and the readiness probe.
package sqlstore

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// TimeFormat is how every timestamp is stored: RFC 3339, UTC, fixed
// nanosecond width, so that text order is time order in every database.
const TimeFormat = "2006-01-02T15:04:05.000000000Z"

// FormatTime formats t in TimeFormat.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeFormat) }

func formatTime(t time.Time) string { return FormatTime(t) }

// Querier is what statements run on: a pool, a connection or a
// transaction.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Dialect is what differs between the databases in the shared statements.
type Dialect struct {
	// IsUnique reports whether err is a uniqueness violation.
	IsUnique func(err error) bool
	// Announce sends a change to the other processes when the transaction
	// commits; nil for a database one process owns.
	Announce func(ctx context.Context, q Querier, kind, subject string) error
}

// Announce implements store.Tx.
func (t *Tx) Announce(ctx context.Context, kind, subject string) error {
	if t.D.Announce == nil {
		return nil
	}
	return t.D.Announce(ctx, t.Q, kind, subject)
}

// Reader implements store.Reader with the shared statements on Q.
type Reader struct {
	Q Querier
	D *Dialect
}

// Tx implements store.Tx on a transaction (Q).
type Tx struct{ Reader }

// Interface guards
var (
	_ store.Reader = Reader{}
	_ store.Tx     = (*Tx)(nil)
)

// Dollars is a Querier that rewrites ? placeholders to $1, $2, ... (the
// statements have no ? in literals) for databases that number them.
type Dollars struct{ Q Querier }

var rebound sync.Map // statement -> rewritten statement

// Rebind rewrites the ? placeholders of query to $n.
func Rebind(query string) string {
	if v, ok := rebound.Load(query); ok {
		return v.(string)
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	out := b.String()
	rebound.Store(query, out)
	return out
}

// ExecContext implements Querier.
func (d Dollars) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return d.Q.ExecContext(ctx, Rebind(query), args...)
}

// QueryContext implements Querier.
func (d Dollars) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return d.Q.QueryContext(ctx, Rebind(query), args...)
}

// QueryRowContext implements Querier.
func (d Dollars) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return d.Q.QueryRowContext(ctx, Rebind(query), args...)
}
