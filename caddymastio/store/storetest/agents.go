package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Agents, their certificates and enrollment sessions.

func newAgent(id string) *store.Agent {
	return &store.Agent{AgentID: "acme::" + id, Name: id, DisplayName: "Agent " + id, SPIFFEID: "spiffe://mastio.local/acme/" + id,
		Status: store.AgentActive, Capabilities: []string{"mcp:call"}, Groups: []string{}, EnrollmentMethod: "admin",
		CreatedAt: ts(0), UpdatedAt: ts(0)}
}

func newCert(agentID, sum string, created time.Time) *store.Cert {
	return &store.Cert{SHA256: sum, AgentID: agentID, Serial: "1f", ChainPEM: "-----BEGIN CERTIFICATE-----\n...", Status: store.CertActive,
		NotBefore: ts(0), NotAfter: ts(24 * time.Hour), CreatedAt: created}
}

func testAgents(t *testing.T, st store.Store) {
	update(t, st, func(tx store.Tx) error {
		for _, id := range []string{"b", "a"} {
			if err := tx.InsertAgent(ctx, newAgent(id)); err != nil {
				return err
			}
		}
		return nil
	})
	err := st.Update(ctx, func(tx store.Tx) error { return tx.InsertAgent(ctx, newAgent("a")) })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second agent with one id: %v, want ErrConflict", err)
	}
	dup := newAgent("c")
	dup.SPIFFEID = newAgent("a").SPIFFEID
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.InsertAgent(ctx, dup) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second agent with one SPIFFE ID: %v, want ErrConflict", err)
	}
	all, err := st.Agents(ctx, store.AgentFilter{})
	if err != nil || len(all) != 2 || all[0].AgentID != "acme::a" || all[1].AgentID != "acme::b" {
		t.Fatalf("agents not listed by id: %v %v", all, err)
	}
	a := all[0]
	if a.Name != "a" || a.DisplayName != "Agent a" || a.Status != store.AgentActive || fmt.Sprint(a.Capabilities) != "[mcp:call]" ||
		a.Groups == nil || len(a.Groups) != 0 || a.EnrollmentMethod != "admin" || !a.CreatedAt.Equal(ts(0)) ||
		a.RevokedAt != nil || a.Certificates == nil {
		t.Fatalf("agent read back differs: %+v", a)
	}

	revokedAt := ts(time.Hour)
	a.Status, a.RevokedAt, a.RevokedReason, a.DPoPJKT, a.UpdatedAt = store.AgentRevoked, &revokedAt, "compromised", "jkt-1", revokedAt
	a.Groups = []string{"ops"}
	update(t, st, func(tx store.Tx) error { return tx.UpdateAgent(ctx, a) })
	got, _ := st.Agents(ctx, store.AgentFilter{ID: "acme::a"})
	if len(got) != 1 || got[0].Status != store.AgentRevoked || !sameTime(got[0].RevokedAt, &revokedAt) ||
		got[0].RevokedReason != "compromised" || got[0].DPoPJKT != "jkt-1" || fmt.Sprint(got[0].Groups) != "[ops]" ||
		!got[0].UpdatedAt.Equal(revokedAt) {
		t.Fatalf("update not kept: %+v", got)
	}
	// Clearing fields clears them.
	a.Status, a.RevokedAt, a.RevokedReason, a.DPoPJKT = store.AgentActive, nil, "", ""
	update(t, st, func(tx store.Tx) error { return tx.UpdateAgent(ctx, a) })
	got, _ = st.Agents(ctx, store.AgentFilter{ID: "acme::a"})
	if got[0].RevokedAt != nil || got[0].RevokedReason != "" || got[0].DPoPJKT != "" {
		t.Fatalf("cleared fields kept: %+v", got[0])
	}
	if active, _ := st.Agents(ctx, store.AgentFilter{Status: store.AgentRevoked}); len(active) != 0 {
		t.Fatalf("status filter: %v", active)
	}
	err = st.Update(ctx, func(tx store.Tx) error { return tx.UpdateAgent(ctx, newAgent("nobody")) })
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("updating a missing agent: %v, want ErrNotFound", err)
	}
	if none, err := st.Agents(ctx, store.AgentFilter{ID: "acme::nobody"}); err != nil || len(none) != 0 {
		t.Fatalf("a missing agent: %v %v", none, err)
	}
}

func testCerts(t *testing.T, st store.Store) {
	update(t, st, func(tx store.Tx) error {
		for _, id := range []string{"a", "b"} {
			if err := tx.InsertAgent(ctx, newAgent(id)); err != nil {
				return err
			}
		}
		for i, c := range []*store.Cert{newCert("acme::a", "01", ts(0)), newCert("acme::a", "02", ts(time.Minute)),
			newCert("acme::b", "03", ts(0))} {
			if err := tx.InsertCert(ctx, c); err != nil {
				return fmt.Errorf("cert %d: %w", i, err)
			}
		}
		return nil
	})
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.InsertCert(ctx, newCert("acme::b", "01", ts(0))) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second certificate with one SHA-256: %v, want ErrConflict", err)
	}
	agents, _ := st.Agents(ctx, store.AgentFilter{ID: "acme::a"})
	if len(agents) != 1 || len(agents[0].Certificates) != 2 || agents[0].Certificates[0].SHA256 != "02" {
		t.Fatalf("an agent's certificates, newest first: %+v", agents)
	}
	c := agents[0].Certificates[1]
	if c.AgentID != "acme::a" || c.Serial != "1f" || c.ChainPEM == "" || !c.NotAfter.Equal(ts(24*time.Hour)) || c.GraceUntil != nil {
		t.Fatalf("certificate read back differs: %+v", c)
	}
	grace := ts(time.Hour)
	c.Status, c.GraceUntil = store.CertGrace, &grace
	update(t, st, func(tx store.Tx) error { return tx.UpdateCert(ctx, c) })
	if got, _ := st.Certs(ctx, store.CertFilter{GraceEndedBy: ts(59 * time.Minute)}); len(got) != 0 {
		t.Fatalf("grace not ended yet: %v", got)
	}
	ended, _ := st.Certs(ctx, store.CertFilter{GraceEndedBy: ts(time.Hour)})
	if len(ended) != 1 || ended[0].SHA256 != "01" || !sameTime(ended[0].GraceUntil, &grace) {
		t.Fatalf("grace ended: %+v", ended)
	}
	retired := ts(2 * time.Hour)
	c.Status, c.GraceUntil, c.RetiredAt = store.CertRetired, nil, &retired
	update(t, st, func(tx store.Tx) error { return tx.UpdateCert(ctx, c) })
	live, _ := st.Certs(ctx, store.CertFilter{AgentID: "acme::a", Statuses: []string{store.CertActive, store.CertGrace}})
	if len(live) != 1 || live[0].SHA256 != "02" {
		t.Fatalf("live certificates of a: %+v", live)
	}
	all, _ := st.Certs(ctx, store.CertFilter{})
	if len(all) != 3 {
		t.Fatalf("all certificates: %d", len(all))
	}
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.UpdateCert(ctx, newCert("acme::a", "ff", ts(0))) }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("updating a missing certificate: %v, want ErrNotFound", err)
	}
}

func newEnrollment(sid string, created time.Time) *store.Enrollment {
	return &store.Enrollment{SessionID: sid, Status: store.EnrollPending, PublicKeyPEM: "-----BEGIN PUBLIC KEY-----\n...",
		PublicKeySHA256: "ab", RequesterName: "Ada", RequesterEmail: "ada@example.com", Reason: "r", DeviceInfo: "d",
		DPoPJKT: "jkt", RemoteIP: "192.0.2.1", CreatedAt: created, ExpiresAt: created.Add(30 * time.Minute)}
}

func testEnrollments(t *testing.T, st store.Store) {
	if _, err := st.Enrollment(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a missing session: %v, want ErrNotFound", err)
	}
	update(t, st, func(tx store.Tx) error {
		for i, sid := range []string{"s1", "s2", "s3"} {
			if err := tx.InsertEnrollment(ctx, newEnrollment(sid, ts(time.Duration(i)*time.Minute))); err != nil {
				return err
			}
		}
		return nil
	})
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.InsertEnrollment(ctx, newEnrollment("s1", ts(0))) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second session with one id: %v, want ErrConflict", err)
	}
	e, err := st.Enrollment(ctx, "s1")
	if err != nil || e.Status != store.EnrollPending || e.PublicKeyPEM == "" || e.RequesterEmail != "ada@example.com" ||
		e.DPoPJKT != "jkt" || !e.ExpiresAt.Equal(ts(30*time.Minute)) || e.DecidedAt != nil || e.CertPEM != "" {
		t.Fatalf("session read back differs: %+v %v", e, err)
	}
	decided := ts(time.Minute)
	e.Status, e.DecidedAt, e.DecidedBy, e.AgentID = store.EnrollApproved, &decided, "admin", "acme::ada"
	e.Capabilities, e.Groups, e.CertPEM = []string{"mcp:call"}, []string{}, "-----BEGIN CERTIFICATE-----"
	update(t, st, func(tx store.Tx) error { return tx.UpdateEnrollment(ctx, e) })
	got, _ := st.Enrollment(ctx, "s1")
	if got.Status != store.EnrollApproved || !sameTime(got.DecidedAt, &decided) || got.DecidedBy != "admin" ||
		got.AgentID != "acme::ada" || fmt.Sprint(got.Capabilities) != "[mcp:call]" || got.CertPEM == "" {
		t.Fatalf("decision not kept: %+v", got)
	}
	list, _ := st.Enrollments(ctx, store.EnrollmentFilter{})
	if len(list) != 3 || list[0].SessionID != "s3" {
		t.Fatalf("sessions newest first: %+v", list)
	}
	if pending, _ := st.Enrollments(ctx, store.EnrollmentFilter{Status: store.EnrollPending}); len(pending) != 2 {
		t.Fatalf("pending: %d", len(pending))
	}
	overdue, _ := st.Enrollments(ctx, store.EnrollmentFilter{ExpiredBy: ts(31 * time.Minute)})
	if len(overdue) != 1 || overdue[0].SessionID != "s2" {
		t.Fatalf("expired by 31m (s1 is decided, s3 not due): %+v", overdue)
	}
	if one, _ := st.Enrollments(ctx, store.EnrollmentFilter{Limit: 1}); len(one) != 1 {
		t.Fatalf("limit: %d", len(one))
	}
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.UpdateEnrollment(ctx, newEnrollment("nope", ts(0))) }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("updating a missing session: %v, want ErrNotFound", err)
	}
}
