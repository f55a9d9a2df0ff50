package caddymastio

import (
	"sync"
	"time"
)

// mcpSessions remembers which agent opened each upstream MCP session, so
// that another agent presenting the same Mcp-Session-Id is refused, and a
// session id the gateway never saw opened is not honoured at all.
type mcpSessions struct {
	mu sync.Mutex
	m  map[string]sessionOwner
}

type sessionOwner struct {
	agent string
	seen  time.Time
}

const (
	maxSessions = 100_000
	sessionIdle = 24 * time.Hour
)

func (s *state) bindSession(server, sid, agent string) {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	if s.sessions.m == nil {
		s.sessions.m = map[string]sessionOwner{}
	}
	key := server + "|" + sid
	if _, ok := s.sessions.m[key]; !ok && len(s.sessions.m) >= maxSessions {
		// Full: forget idle sessions, or else the least recently used one.
		// A forgotten session is refused (404) and its client starts anew;
		// it never becomes usable by another agent.
		now := time.Now()
		oldest, oldestKey := now, ""
		for k, o := range s.sessions.m {
			if now.Sub(o.seen) > sessionIdle {
				delete(s.sessions.m, k)
			} else if o.seen.Before(oldest) {
				oldest, oldestKey = o.seen, k
			}
		}
		if len(s.sessions.m) >= maxSessions {
			delete(s.sessions.m, oldestKey)
		}
	}
	if o, ok := s.sessions.m[key]; ok && o.agent != agent {
		return // first owner keeps it
	}
	s.sessions.m[key] = sessionOwner{agent: agent, seen: time.Now()}
}

func (s *state) sessionOwner(server, sid string) (string, bool) {
	s.sessions.mu.Lock()
	defer s.sessions.mu.Unlock()
	o, ok := s.sessions.m[server+"|"+sid]
	if ok {
		o.seen = time.Now()
		s.sessions.m[server+"|"+sid] = o
	}
	return o.agent, ok
}
