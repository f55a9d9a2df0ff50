package registry

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// Two instances on one store: a certificate issued on one is accepted by
// the other at once, before any announcement reaches it; an agent the
// other revoked stays revoked here (a refresh never undoes a change).
func TestASharedRegistryFindsWhatAnotherInstanceJustIssued(t *testing.T) {
	f := newFixture(t)
	log := audit.Open(f.store, audit.Options{})
	t.Cleanup(func() { log.Close() })
	other, err := Open(context.Background(), Config{Store: f.store, Audit: log, CA: f.ca, Org: "acme", Shared: true,
		Now: func() time.Time { return *f.clock }})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := f.r.CreateAgent(context.Background(), f.p, NewAgent{Name: "roamer", Method: "admin", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	if _, cerr := other.Check(sum(iss.Cert)); cerr == nil {
		t.Fatal("the other instance knew the certificate without reading it: the test proves nothing")
	}
	id, cerr := other.CheckDER(iss.Cert.Raw)
	if cerr != nil || id.AgentID != "acme::roamer" {
		t.Fatalf("the other instance: %+v %v", id, cerr)
	}
	if _, ok := other.Lookup("acme::roamer"); !ok {
		t.Fatal("Lookup after the refresh")
	}
	if _, err := other.Revoke(context.Background(), "acme::roamer", "test", "admin", nil); err != nil {
		t.Fatal(err)
	}
	if _, cerr := other.CheckDER(iss.Cert.Raw); cerr == nil || cerr.Code != DenyRevoked {
		t.Fatalf("after the revoke: %v", cerr)
	}
	// Not shared: a miss is a miss (one process, nothing to read).
	if _, cerr := f.r.CheckDER(make([]byte, 10)); cerr == nil {
		t.Fatal("an unknown certificate passed")
	}
}
