package caddymastio

import (
	"fmt"
	"testing"
	"time"
)

// Sessions belong to the agent that opened them; a full table forgets the
// least recently used one (which is then refused), never an owner.
func TestSessionOwners(t *testing.T) {
	s := &state{}
	s.bindSession("weather", "sid-0", "orga::a")
	s.bindSession("weather", "sid-0", "orga::b") // the first owner keeps it
	if owner, ok := s.sessionOwner("weather", "sid-0"); !ok || owner != "orga::a" {
		t.Fatalf("owner of sid-0: %q %v", owner, ok)
	}
	if _, ok := s.sessionOwner("search", "sid-0"); ok {
		t.Fatal("a session id is known on another server")
	}
	base := time.Now().Add(-time.Hour)
	for i := 0; i < maxSessions; i++ {
		s.bindSession("weather", fmt.Sprintf("sid-%d", i), "orga::a")
		o := s.sessions.m[fmt.Sprintf("weather|sid-%d", i)]
		o.seen = base.Add(time.Duration(i) * time.Millisecond) // distinct, in order
		s.sessions.m[fmt.Sprintf("weather|sid-%d", i)] = o
	}
	s.sessionOwner("weather", "sid-0") // used again: sid-1 is now the least recently used
	s.bindSession("weather", "new", "orga::c")
	if owner, ok := s.sessionOwner("weather", "new"); !ok || owner != "orga::c" {
		t.Fatalf("new session on a full table: %q %v", owner, ok)
	}
	if _, ok := s.sessionOwner("weather", "sid-1"); ok {
		t.Fatal("the least recently used session was kept")
	}
	if owner, ok := s.sessionOwner("weather", "sid-0"); !ok || owner != "orga::a" {
		t.Fatalf("a recently used session was dropped: %q %v", owner, ok)
	}
	if n := len(s.sessions.m); n != maxSessions {
		t.Fatalf("%d sessions held", n)
	}
}
