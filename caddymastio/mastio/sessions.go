package mastio

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
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

// BindSession records that agent opened the MCP session sid on server;
// the first owner keeps it.
func (s *Shared) BindSession(server, sid, agent string) {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	if s.sessions.lru == nil {
		s.sessions.lru, _ = simplelru.NewLRU[string, sessionOwner](maxSessions, nil)
	}
	key := server + "|" + sid
	if o, ok := s.sessions.lru.Get(key); ok && o.agent != agent && time.Since(o.seen) <= sessionIdle {
		return // first owner keeps it
	}
	s.sessions.lru.Add(key, sessionOwner{agent: agent, seen: time.Now()}) // evicts the least recently used when full
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
