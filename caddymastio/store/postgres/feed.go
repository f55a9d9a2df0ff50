package postgres

import (
	"context"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Listen implements store.Feed with LISTEN on its own connection. A lost
// connection is made again (every second until it works); each
// (re)connection is announced as store.ResyncAll, since changes may have
// been missed meanwhile. Why the connection was lost, or could not be
// made, goes to lost.
func (s *DB) Listen(ctx context.Context, fn func(store.Change), lost func(error)) {
	for ctx.Err() == nil {
		if err := s.listenOnce(ctx, fn); err != nil && ctx.Err() == nil {
			lost(unavailable(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *DB) listenOnce(ctx context.Context, fn func(store.Change)) error {
	conn, err := pgx.Connect(ctx, s.url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+changesChannel); err != nil {
		return err
	}
	fn(store.Change{Kind: store.ResyncAll})
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		parts := strings.SplitN(n.Payload, "\n", 3)
		if len(parts) != 3 || parts[2] == s.origin {
			continue // our own, or not ours at all
		}
		fn(store.Change{Kind: parts[0], Subject: parts[1]})
	}
}

// Interface guards
var _ store.Feed = (*DB)(nil)
