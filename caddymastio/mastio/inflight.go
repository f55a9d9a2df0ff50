package mastio

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// errCredentialWithdrawn is the cause with which an agent's requests in
// flight are cancelled when its credentials are revoked or rotated out.
var errCredentialWithdrawn = errors.New("the agent's credentials were revoked or rotated out while the request was served")

// inflight holds the requests being served for each agent, so that a
// revocation or rotation ends them at once: open streams close and calls
// waiting for their upstream are not answered. A request is tracked from
// its authentication until its handler returns.
type inflight struct {
	reg *registry.Registry

	mu      sync.Mutex
	byAgent map[string]map[*inflightReq]struct{}
	// rechecks holds, per agent, the time a recheck is scheduled for (the
	// end of a grace period), so that one timer serves every request.
	rechecks map[string]time.Time
}

type inflightReq struct {
	cred   registry.Credential
	cancel context.CancelCauseFunc
}

func newInflight(reg *registry.Registry) *inflight {
	f := &inflight{reg: reg, byAgent: map[string]map[*inflightReq]struct{}{}, rechecks: map[string]time.Time{}}
	reg.OnChange(f.recheck)
	return f
}

// track returns a context that is cancelled (cause
// errCredentialWithdrawn) as soon as cred stops admitting its agent, and
// the function that stops tracking it.
func (f *inflight) track(ctx context.Context, cred registry.Credential) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	req := &inflightReq{cred: cred, cancel: cancel}
	f.mu.Lock()
	set := f.byAgent[cred.AgentID]
	if set == nil {
		set = map[*inflightReq]struct{}{}
		f.byAgent[cred.AgentID] = set
	}
	set[req] = struct{}{}
	f.mu.Unlock()
	// A change between the caller's check and this registration is caught
	// here, not missed.
	if ok, until := f.reg.ValidUntil(cred); !ok {
		cancel(errCredentialWithdrawn)
	} else if !until.IsZero() {
		f.recheckAt(cred.AgentID, until)
	}
	return ctx, func() {
		f.mu.Lock()
		delete(set, req)
		if len(set) == 0 {
			delete(f.byAgent, cred.AgentID)
		}
		f.mu.Unlock()
		cancel(nil)
	}
}

// recheck cancels the requests of agentID whose credentials no longer
// admit it. A certificate in a grace period is checked again when the
// period ends.
func (f *inflight) recheck(agentID string) {
	f.mu.Lock()
	reqs := make([]*inflightReq, 0, len(f.byAgent[agentID]))
	for req := range f.byAgent[agentID] {
		reqs = append(reqs, req)
	}
	f.mu.Unlock()
	var later time.Time
	for _, req := range reqs {
		ok, until := f.reg.ValidUntil(req.cred)
		switch {
		case !ok:
			req.cancel(errCredentialWithdrawn)
		case !until.IsZero() && (later.IsZero() || until.Before(later)):
			later = until
		}
	}
	if !later.IsZero() {
		f.recheckAt(agentID, later)
	}
}

func (f *inflight) recheckAt(agentID string, at time.Time) {
	f.mu.Lock()
	if t, ok := f.rechecks[agentID]; ok && !t.After(at) {
		f.mu.Unlock()
		return
	}
	f.rechecks[agentID] = at
	f.mu.Unlock()
	time.AfterFunc(time.Until(at)+time.Millisecond, func() {
		f.mu.Lock()
		if f.rechecks[agentID].Equal(at) {
			delete(f.rechecks, agentID)
		}
		f.mu.Unlock()
		f.recheck(agentID)
	})
}

// Withdrawn reports whether ctx (of a request Admit tracks) was cancelled
// because the agent's credentials were withdrawn.
func Withdrawn(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errCredentialWithdrawn)
}

// TrackAgent returns a context cancelled as soon as the agent is revoked
// (for work a surface does on an agent's behalf outside a request Admit
// tracks), and the function that stops tracking it.
func (m *Mastio) TrackAgent(ctx context.Context, agentID string) (context.Context, func()) {
	return m.inflight.track(ctx, registry.Credential{AgentID: agentID})
}
