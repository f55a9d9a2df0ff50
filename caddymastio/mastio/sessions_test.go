package mastio

import (
	"fmt"
	"testing"
	"time"
)

// Sessions belong to the agent that opened them; a full table forgets the
// least recently used one (which is then refused), never an owner.
func TestSessionOwners(t *testing.T) {
	s := &Shared{}
	s.bindSession("weather", "sid-0", "orga::a")
	s.bindSession("weather", "sid-0", "orga::b") // the first owner keeps it
	if owner, ok := s.SessionOwner("weather", "sid-0"); !ok || owner != "orga::a" {
		t.Fatalf("owner of sid-0: %q %v", owner, ok)
	}
	if _, ok := s.SessionOwner("search", "sid-0"); ok {
		t.Fatal("a session id is known on another server")
	}
	for i := 0; i < maxSessions; i++ {
		s.bindSession("weather", fmt.Sprintf("sid-%d", i), "orga::a")
	}
	s.SessionOwner("weather", "sid-0") // used again: sid-1 is now the least recently used
	s.bindSession("weather", "new", "orga::c")
	if owner, ok := s.SessionOwner("weather", "new"); !ok || owner != "orga::c" {
		t.Fatalf("new session on a full table: %q %v", owner, ok)
	}
	if _, ok := s.SessionOwner("weather", "sid-1"); ok {
		t.Fatal("the least recently used session was kept")
	}
	if owner, ok := s.SessionOwner("weather", "sid-0"); !ok || owner != "orga::a" {
		t.Fatalf("a recently used session was dropped: %q %v", owner, ok)
	}
	if n := s.sessions.lru.Len(); n != maxSessions {
		t.Fatalf("%d sessions held", n)
	}
	// A session idle for longer than a day is forgotten.
	s.sessions.lru.Add("weather|idle", sessionOwner{agent: "orga::a", seen: time.Now().Add(-sessionIdle - time.Minute)})
	if _, ok := s.SessionOwner("weather", "idle"); ok {
		t.Fatal("an idle session is still honoured")
	}
}

// BenchmarkNewSessionAt100k: binding a new session while 100,000 are
// held (the least recently used makes room). Target: under 5 µs.
func BenchmarkNewSessionAt100k(b *testing.B) {
	s := &Shared{}
	for i := 0; i < maxSessions; i++ {
		s.bindSession("weather", fmt.Sprintf("sid-%d", i), "orga::a")
	}
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = fmt.Sprintf("new-%d", i)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.bindSession("weather", ids[i], "orga::b")
	}
}
