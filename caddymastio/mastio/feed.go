package mastio

import (
	"context"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// fullResyncEvery is how often an instance sharing its store re-reads
// every cache, whatever it heard: the safety net under the change feed.
const fullResyncEvery = 30 * time.Second

// followChanges applies what other instances sharing the store change —
// revocations, rotations, signing keys, the policy, MCP servers — within
// the notification's delay, and re-reads everything every
// fullResyncEvery and after a lost connection. A store that one process
// owns has no feed: nothing to follow.
func (s *Shared) followChanges(ctx context.Context) {
	feed, ok := s.store.(store.Feed)
	if !ok {
		return
	}
	listening := make(chan struct{})
	following := true // logged once when lost, once when back
	go func() {
		defer close(listening)
		feed.Listen(ctx, func(c store.Change) {
			if c.Kind == store.ResyncAll && !following {
				following = true
				s.log().Info("following other instances' changes again")
			}
			s.applyChange(ctx, c)
		}, func(err error) {
			if following {
				following = false
				s.log().Warn("lost the feed of other instances' changes: revocations and other changes made elsewhere apply here "+
					"at the next successful resync (every 30 s) or when the feed is back", zap.Error(err))
			}
		})
	}()
	defer func() { <-listening }() // Close waits for the listener too
	t := time.NewTicker(fullResyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.applyChange(ctx, store.Change{Kind: store.ResyncAll})
		}
	}
}

// applyChange re-reads what a change makes stale.
func (s *Shared) applyChange(ctx context.Context, c store.Change) {
	all := c.Kind == store.ResyncAll
	var errs []error
	if all || strings.HasPrefix(c.Kind, "agent.") || c.Kind == "enrollment.approved" {
		errs = append(errs, s.registry.Reload(ctx))
	}
	if all || strings.HasPrefix(c.Kind, "token.signing_key") {
		errs = append(errs, s.keys.Reload(ctx))
	}
	if all || strings.HasPrefix(c.Kind, "policy.") {
		s.policyMu.Lock() // not over a change this instance is making
		err := s.loadPolicy(ctx)
		s.policyMu.Unlock()
		if err != nil {
			errs = append(errs, err)
		} else {
			s.policyWatch.Notify(struct{}{})
		}
	}
	if all || c.Kind == "admin.secret_changed" {
		errs = append(errs, s.reloadAdminSecret(ctx))
	}
	if all || strings.HasPrefix(c.Kind, "mcp_server.") {
		s.forgetStoredServers()
		if c.Subject != "" {
			s.serverWatch.Notify(c.Subject)
		}
	}
	for _, err := range errs {
		if err != nil {
			s.log().Warn("applying a change made by another instance", zap.String("change", c.Kind),
				zap.String("subject", c.Subject), zap.Error(err))
		}
	}
}
