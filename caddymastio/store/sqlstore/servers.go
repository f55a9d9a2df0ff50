package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Servers implements store.Reader.
func (r Reader) Servers(ctx context.Context) ([]*store.Server, error) {
	rows, err := r.Q.QueryContext(ctx, `SELECT name, config, created_at, updated_at FROM mcp_servers ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*store.Server{}
	for rows.Next() {
		s := &store.Server{}
		var cfg, created, updated string
		if err := rows.Scan(&s.Name, &cfg, &created, &updated); err != nil {
			return nil, err
		}
		s.Config, s.CreatedAt, s.UpdatedAt = []byte(cfg), parseTime(created), parseTime(updated)
		out = append(out, s)
	}
	return out, rows.Err()
}

// PutServer implements store.Tx.
func (t *Tx) PutServer(ctx context.Context, s *store.Server) error {
	now := formatTime(time.Now())
	if _, err := t.Q.ExecContext(ctx, `INSERT INTO mcp_servers (name, config, created_at, updated_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at`,
		s.Name, string(s.Config), now, now); err != nil {
		return fmt.Errorf("storing MCP server %s: %w", s.Name, err)
	}
	return nil
}

// DeleteServer implements store.Tx.
func (t *Tx) DeleteServer(ctx context.Context, name string) (bool, error) {
	res, err := t.Q.ExecContext(ctx, `DELETE FROM mcp_servers WHERE name = ?`, name)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}
