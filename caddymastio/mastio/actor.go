package mastio

import "context"

type actorKey struct{}

// DefaultActor is the audit actor of an operation whose context names
// none: the holder of the admin secret.
const DefaultActor = "admin"

// WithActor returns ctx naming actor as who asks for the operations run
// with it ("admin" on the site's admin API, "caddy-admin" on Caddy's admin
// endpoint, "dashboard" in the console): the audit rows they write name
// it.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorOf is the actor ctx names, DefaultActor if none.
func ActorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return DefaultActor
}
