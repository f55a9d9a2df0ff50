package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
)

// TestPostgresDownFailsClosedAndRecovers: the database goes away under a
// running gateway. /readyz says so; what needs the database is refused
// with 503 (never allowed, never a 500); nothing acknowledged before is
// lost; when the database is back the gateway recovers by itself, without
// a restart, and the chain verifies.
func TestPostgresDownFailsClosedAndRecovers(t *testing.T) {
	s := exampleServer(t, "database {$MASTIO_DATABASE_URL}", "", "MASTIO_DATABASE_URL="+pgtest.Database(t))
	before := makeIdentity(t, s, "before", "api:read")
	sess := sessionAt(t, before, s)
	tok, err := sess.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := s.client()
	pgtest.Stop(t)
	t.Cleanup(func() { pgtest.Restart(t) }) // for the tests after this one, whatever happens here
	waitFor(t, "readyz to report the database", 15*time.Second, func() bool {
		code, _, body := s.get(c, "/readyz")
		return code == 503 && contains(body, `"database":"error"`)
	})
	if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "during"}); code != 503 {
		t.Errorf("creating an agent with the database down: %d %v", code, body["_raw"])
	}
	if _, err := sessionAt(t, before, s).Token(context.Background()); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("a token request with the database down: %v", err)
	}
	// A route that needs no database keeps deciding on the state in force:
	// nobody can revoke while the database is down (that needs it too).
	if code := whoami(t, s, before, sess, tok); code != 200 {
		t.Errorf("a guarded route with a token minted before: %d", code)
	}

	pgtest.Restart(t)
	waitFor(t, "readyz to recover", 30*time.Second, func() bool {
		code, _, _ := s.get(c, "/readyz")
		return code == 200
	})
	if code, body := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": "after"}); code != 201 {
		t.Fatalf("creating an agent after the recovery: %d %v", code, body["_raw"])
	}
	if _, err := sessionAt(t, before, s).Token(context.Background()); err != nil {
		t.Fatalf("a token after the recovery: %v", err)
	}
	code, _, body := s.get(c, "/v1/admin/audit/verify", "X-Admin-Secret", adminSecret)
	if code != 200 || !strings.Contains(body, `"ok":true`) {
		t.Fatalf("audit verify: %d %s", code, body)
	}
	if code, _, body := s.get(c, "/v1/admin/agents/orga::before", "X-Admin-Secret", adminSecret); code != 200 || !strings.Contains(body, "active") {
		t.Fatalf("the agent created before the outage: %d %s", code, body)
	}
}
