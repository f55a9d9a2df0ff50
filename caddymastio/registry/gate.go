package registry

import (
	"hash/fnv"
	"sync"
	"time"
)

// Credential is what a request in flight was admitted with: an agent and,
// when its connection presented one, the client certificate (by pin).
type Credential struct {
	AgentID string
	Pin     *[32]byte
}

// ValidUntil reports whether c still admits its agent — the agent is
// active and the certificate, if any, is still pinned to it — and until
// when: the end of the certificate's grace period, or the zero time when
// nothing but a change (revocation, rotation) can end it.
func (r *Registry) ValidUntil(c Credential) (bool, time.Time) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.agents[c.AgentID]
	if !ok || a.revoked {
		return false, time.Time{}
	}
	if c.Pin == nil {
		return true, time.Time{}
	}
	p, ok := r.pins[*c.Pin]
	if !ok || p.agentID != c.AgentID {
		return false, time.Time{}
	}
	switch p.state {
	case certActive:
		return true, time.Time{}
	case certGrace:
		if r.cfg.Now().Before(p.graceUntil) {
			return true, p.graceUntil
		}
	}
	return false, time.Time{}
}

// Valid reports whether c still admits its agent.
func (r *Registry) Valid(c Credential) bool {
	ok, _ := r.ValidUntil(c)
	return ok
}

// Deliver runs fn only while c is valid, and holds back the changes that
// would withdraw it (revocation, rotation) until fn returns. A caller that
// appends an answer's audit row in fn, and delivers the answer only when
// Deliver reports true, never delivers an answer whose row follows the
// agent.revoked (or agent.cert_rotated) row. fn should be short: it delays
// such a change of this agent.
func (r *Registry) Deliver(c Credential, fn func() error) (bool, error) {
	g := r.gate(c.AgentID)
	g.RLock()
	defer g.RUnlock()
	if !r.Valid(c) {
		return false, nil
	}
	return true, fn()
}

// OnChange registers fn, called after a change to an agent's credentials
// is in force (revocation, rotation, the end of a grace period), with the
// agent id. fn runs on the changing goroutine and must not block.
func (r *Registry) OnChange(fn func(agentID string)) {
	r.watchMu.Lock()
	r.watchers = append(r.watchers, fn)
	r.watchMu.Unlock()
}

func (r *Registry) changed(agentID string) {
	r.watchMu.Lock()
	ws := r.watchers
	r.watchMu.Unlock()
	for _, fn := range ws {
		fn(agentID)
	}
}

// gate is the lock a change of agentID's credentials holds for writing
// and Deliver for reading (striped: agents share 64 locks).
func (r *Registry) gate(agentID string) *sync.RWMutex {
	h := fnv.New32a()
	h.Write([]byte(agentID))
	return &r.gates[h.Sum32()%uint32(len(r.gates))]
}
