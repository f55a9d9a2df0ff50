package mastio

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
	"go.uber.org/zap"
)

// sessionOwners remembers which agent opened each upstream MCP session, so
// that another agent presenting the same Mcp-Session-Id is refused, and a
// session id the gateway never saw opened is not honoured at all. It holds
// at most maxSessions, in least-recently-used order: when full, the least
// recently used session is forgotten (its client gets 404 and starts a new
// one; it never becomes usable by another agent), and a session idle for a
// day is forgotten when next looked up. Every operation is O(1).
type sessionOwners struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, sessionOwner]
}

type sessionOwner struct {
	agent string
	seen  time.Time
}

const (
	maxSessions = 100_000
	sessionIdle = 24 * time.Hour
)

// BindSession records that agent opened the MCP session sid on server
// (the first owner keeps it); a new session is counted and logged
// (session allow).
func (m *Mastio) BindSession(ctx context.Context, server, sid, agent string) {
	if m.bindSession(server, sid, agent) {
		mcpSessions.WithLabelValues(server, "created").Inc()
		m.LogDecisionContext(ctx, "MCP session opened", Decision{Kind: KindSession, Allow: true, Reason: "opened", AgentID: agent,
			Fields: []zap.Field{zap.String("server", server)}})
	}
}

// RefuseSession counts and logs a request refused for its MCP session:
// reason unknown_session (not opened here) or session_of_another_agent.
func (m *Mastio) RefuseSession(r *http.Request, server, agent, jkt, reason string) {
	mcpSessions.WithLabelValues(server, "denied").Inc()
	m.LogDecision(r, "MCP session refused", Decision{Kind: KindSession, Reason: reason, AgentID: agent, JKT: jkt,
		Fields: []zap.Field{zap.String("server", server)}})
}

// bindSession binds sid to agent unless another agent holds it; true if
// the binding is new.
func (s *Shared) bindSession(server, sid, agent string) bool {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	if s.sessions.lru == nil {
		s.sessions.lru, _ = simplelru.NewLRU[string, sessionOwner](maxSessions, nil)
	}
	key := server + "|" + sid
	o, ok := s.sessions.lru.Get(key)
	if ok && o.agent != agent && time.Since(o.seen) <= sessionIdle {
		return false // first owner keeps it
	}
	s.sessions.lru.Add(key, sessionOwner{agent: agent, seen: time.Now()}) // evicts the least recently used when full
	return !ok || o.agent != agent
}

// SessionOwner is the agent that opened the MCP session sid on server;
// false for a session this process did not see opened (or forgot).
func (s *Shared) SessionOwner(server, sid string) (string, bool) {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	if s.sessions.lru == nil {
		return "", false
	}
	key := server + "|" + sid
	o, ok := s.sessions.lru.Get(key)
	if !ok {
		return "", false
	}
	if time.Since(o.seen) > sessionIdle {
		s.sessions.lru.Remove(key)
		return "", false
	}
	o.seen = time.Now()
	s.sessions.lru.Add(key, o)
	return o.agent, true
}
