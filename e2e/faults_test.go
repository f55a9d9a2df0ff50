package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
	"github.com/caddy-mastio/caddy-mastio/internal/redistest"
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

// TestFaultsUnderTraffic: Postgres, then Redis, are stopped and started
// again while agents are being created and an agent makes DPoP-bound
// calls. Nothing fails open (every answer is a success or 503, never 500,
// never a call let through unchecked), every agent whose creation was
// acknowledged exists afterwards, the gateway recovers without a restart,
// and the chain verifies.
func TestFaultsUnderTraffic(t *testing.T) {
	env := []string{"MASTIO_DATABASE_URL=" + pgtest.Database(t), "MASTIO_REDIS_URL=" + redistest.URL(t)}
	s := exampleServer(t, "database {$MASTIO_DATABASE_URL}\n\t\tredis {$MASTIO_REDIS_URL}", "", env...)
	caller := makeIdentity(t, s, "caller", "api:read")
	sess := sessionAt(t, caller, s)
	httpc := sess.HTTPClient()

	var mu sync.Mutex
	acked := []string{}
	statuses := map[string]map[int]int{"create": {}, "call": {}}
	note := func(kind string, code int) {
		mu.Lock()
		statuses[kind][code]++
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // agent creation: needs Postgres
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("load-%d", i)
			code, _ := s.adminCall(t, "POST", "/v1/admin/agents", adminSecret, map[string]any{"agent_name": name})
			note("create", code)
			if code == 201 {
				mu.Lock()
				acked = append(acked, name)
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() { // DPoP-bound calls: need Redis (replay) and tokens (Postgres)
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			req, _ := http.NewRequest("GET", s.url("/whoami"), nil)
			resp, err := httpc.Do(req)
			if err != nil {
				note("call", -1) // the session could not get a token: refused, not let through
			} else {
				resp.Body.Close()
				note("call", resp.StatusCode)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	outage := func(what string, down, up func(testing.TB)) {
		time.Sleep(300 * time.Millisecond) // traffic before
		down(t)
		time.Sleep(1500 * time.Millisecond) // the outage
		up(t)
		waitFor(t, "readyz after "+what, 30*time.Second, func() bool {
			code, _, _ := s.get(s.client(), "/readyz")
			return code == 200
		})
	}
	outage("Postgres", pgtest.Stop, pgtest.Restart)
	outage("Redis", redistest.Stop, redistest.Restart)
	time.Sleep(300 * time.Millisecond) // traffic after
	close(stop)
	wg.Wait()

	t.Logf("answers: %v", statuses)
	for kind, codes := range statuses {
		for code := range codes {
			ok := code == 503 || code == 201 && kind == "create" || code == 200 && kind == "call" || code == -1 && kind == "call" ||
				code == 401 && kind == "call" // a nonce of a Redis that lost its data: refused, the client asks again
			if !ok {
				t.Errorf("%s answered %d during the faults", kind, code)
			}
		}
	}
	if statuses["create"][503] == 0 || statuses["call"][503] == 0 || statuses["call"][200] == 0 || statuses["create"][201] == 0 {
		t.Fatalf("the faults or the traffic did not happen: %v", statuses)
	}
	for _, name := range acked {
		if code, _, _ := s.get(s.client(), "/v1/admin/agents/orga::"+name, "X-Admin-Secret", adminSecret); code != 200 {
			t.Errorf("agent %s was acknowledged, then lost: %d", name, code)
		}
	}
	code, _, body := s.get(s.client(), "/v1/admin/audit/verify", "X-Admin-Secret", adminSecret)
	if code != 200 || !strings.Contains(body, `"ok":true`) {
		t.Fatalf("audit verify: %d %s", code, body)
	}
	req, _ := http.NewRequest("GET", s.url("/whoami"), nil)
	if resp, err := httpc.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("a call after the faults: %v", err)
	}
}
