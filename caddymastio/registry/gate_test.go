package registry

import (
	"context"
	"testing"
	"time"
)

// TestDeliverOrdersAnswersBeforeChanges: an answer being delivered (its
// audit row written under Deliver) holds a revocation back until it is
// done, and no answer is delivered once the revocation is in force.
func TestDeliverOrdersAnswersBeforeChanges(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	iss, err := f.r.CreateAgent(ctx, f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	pin := sum(iss.Cert)
	cred := Credential{AgentID: "acme::bot", Pin: &pin}
	var changed []string
	f.r.OnChange(func(id string) { changed = append(changed, id) })

	inside, release := make(chan struct{}), make(chan struct{})
	delivered := make(chan bool)
	go func() {
		ok, _ := f.r.Deliver(cred, func() error {
			close(inside)
			<-release
			return nil
		})
		delivered <- ok
	}()
	<-inside
	revoked := make(chan error)
	go func() {
		_, err := f.r.Revoke(ctx, "acme::bot", "test", "admin", nil)
		revoked <- err
	}()
	select {
	case <-revoked:
		t.Fatal("the revocation went ahead while an answer was being delivered")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if !<-delivered {
		t.Fatal("the answer begun before the revocation was not delivered")
	}
	if err := <-revoked; err != nil {
		t.Fatal(err)
	}
	if ok, err := f.r.Deliver(cred, func() error { t.Fatal("fn ran after the revocation"); return nil }); ok || err != nil {
		t.Fatalf("after the revocation: %v %v", ok, err)
	}
	if len(changed) != 1 || changed[0] != "acme::bot" {
		t.Fatalf("change notifications: %v", changed)
	}
}

// TestValidUntilFollowsRotation: a certificate rotated out stops admitting
// its agent at once, or at the end of its grace period; a request without
// a certificate follows the agent.
func TestValidUntilFollowsRotation(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	iss, _ := f.r.CreateAgent(ctx, f.p, NewAgent{Name: "bot", Method: "admin", Actor: "admin"})
	old := sum(iss.Cert)
	rot, err := f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Grace: time.Hour, Actor: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	ok, until := f.r.ValidUntil(Credential{AgentID: "acme::bot", Pin: &old})
	if !ok || until.Sub(*f.clock) != time.Hour {
		t.Fatalf("old certificate in grace: %v %v", ok, until)
	}
	if _, err := f.r.RotateCert(ctx, f.p, "acme::bot", Rotation{Actor: "admin"}); err != nil {
		t.Fatal(err)
	}
	newer := sum(rot.Cert)
	if f.r.Valid(Credential{AgentID: "acme::bot", Pin: &newer}) {
		t.Fatal("a certificate rotated out without grace still admits the agent")
	}
	*f.clock = f.clock.Add(time.Hour + time.Second)
	if f.r.Valid(Credential{AgentID: "acme::bot", Pin: &old}) {
		t.Fatal("a certificate admits the agent after its grace period")
	}
	if !f.r.Valid(Credential{AgentID: "acme::bot"}) {
		t.Fatal("the agent itself is still active")
	}
	if f.r.Valid(Credential{AgentID: "acme::other", Pin: &old}) {
		t.Fatal("a certificate admitted another agent")
	}
}
