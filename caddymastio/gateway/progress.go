package gateway

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// progressRouter relays the progress an upstream reports on a call to the
// agent that asked for it: the call goes upstream with a token of the
// gateway's (the agents' tokens could collide on a shared upstream
// session), mapped back here to the agent's session and token.
type progressRouter struct {
	seq atomic.Uint64
	mu  sync.Mutex
	m   map[string]progressTarget
}

type progressTarget struct {
	ctx     context.Context // the agent's request: its notifications go on its stream
	session *mcpsdk.ServerSession
	token   any
}

// register maps a new upstream token to the agent's request (ctx),
// session and token; done forgets it.
func (r *progressRouter) register(ctx context.Context, ss *mcpsdk.ServerSession, token any) (up string, done func()) {
	up = fmt.Sprintf("mastio-progress-%d", r.seq.Add(1))
	r.mu.Lock()
	if r.m == nil {
		r.m = map[string]progressTarget{}
	}
	r.m[up] = progressTarget{ctx, ss, token}
	r.mu.Unlock()
	return up, func() {
		r.mu.Lock()
		delete(r.m, up)
		r.mu.Unlock()
	}
}

// relay passes an upstream progress notification on to its agent; one
// for a token the gateway did not issue is dropped.
func (r *progressRouter) relay(p *mcpsdk.ProgressNotificationParams) {
	up, ok := p.ProgressToken.(string)
	if !ok {
		return
	}
	r.mu.Lock()
	t, ok := r.m[up]
	r.mu.Unlock()
	if !ok || t.session == nil {
		return
	}
	t.session.NotifyProgress(t.ctx, &mcpsdk.ProgressNotificationParams{ProgressToken: t.token, Progress: p.Progress,
		Total: p.Total, Message: p.Message})
}
