package mastio

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Console session limits: idle and absolute lifetimes, and how many are
// kept (the least recently used goes first).
const (
	ConsoleIdle     = 30 * time.Minute
	ConsoleLifetime = 12 * time.Hour
	maxConsoles     = 1000
)

// ConsoleSession is a signed-in operator of the dashboard. Only the
// SHA-256 of its cookie value is kept, so a memory dump does not hand out
// live sessions.
type ConsoleSession struct {
	CSRF     string // the token every form of the session carries
	RemoteIP string
	Created  time.Time
	seen     time.Time
}

// consoleSessions are the dashboard's sessions. They live with the data
// location, so a config reload keeps operators signed in; a restart
// signs them out.
type consoleSessions struct {
	mu  sync.Mutex
	lru *simplelru.LRU[[32]byte, *ConsoleSession]
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// StartConsoleSession opens a session and returns its cookie value.
func (s *Shared) StartConsoleSession(remoteIP string) (string, *ConsoleSession) {
	c := &s.consoles
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru == nil {
		c.lru, _ = simplelru.NewLRU[[32]byte, *ConsoleSession](maxConsoles, nil)
	}
	id := randomToken()
	now := time.Now()
	sess := &ConsoleSession{CSRF: randomToken(), RemoteIP: remoteIP, Created: now, seen: now}
	c.lru.Add(sha256.Sum256([]byte(id)), sess)
	return id, sess
}

// ConsoleSession returns the live session of a cookie value and marks it
// used; nil if there is none or it expired (idle or too old).
func (s *Shared) ConsoleSession(id string) *ConsoleSession {
	if id == "" {
		return nil
	}
	c := &s.consoles
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru == nil {
		return nil
	}
	key := sha256.Sum256([]byte(id))
	sess, ok := c.lru.Get(key)
	if !ok {
		return nil
	}
	now := time.Now()
	if now.Sub(sess.seen) > ConsoleIdle || now.Sub(sess.Created) > ConsoleLifetime {
		c.lru.Remove(key)
		return nil
	}
	sess.seen = now
	return sess
}

// EndConsoleSession ends a session (logout): its cookie stops working.
func (s *Shared) EndConsoleSession(id string) bool {
	c := &s.consoles
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru != nil && c.lru.Remove(sha256.Sum256([]byte(id)))
}

// CheckCSRF reports whether token is the session's form token.
func (cs *ConsoleSession) CheckCSRF(token string) bool {
	return subtle.ConstantTimeCompare([]byte(token), []byte(cs.CSRF)) == 1
}

// ExpireConsoleSessionsForTest ages every session past its idle time.
func (s *Shared) ExpireConsoleSessionsForTest() {
	c := &s.consoles
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru == nil {
		return
	}
	for _, k := range c.lru.Keys() {
		if sess, ok := c.lru.Peek(k); ok {
			sess.seen = sess.seen.Add(-2 * ConsoleIdle)
		}
	}
}
