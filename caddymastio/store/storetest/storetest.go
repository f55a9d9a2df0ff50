// Package storetest is the conformance suite of package store's contract:
// every implementation (store/sqlite today, Postgres next) runs it
// unchanged from its own tests:
//
//	func TestContract(t *testing.T) { storetest.Run(t, open) }
//
// where open returns a fresh, empty store that is closed when the test
// ends.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Open returns a fresh, empty store, closed when t ends.
type Open func(t *testing.T) store.Store

// Run runs the suite against the stores open returns.
func Run(t *testing.T, open Open) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Config", testConfig},
		{"UpdateIsAtomic", testUpdateIsAtomic},
		{"UpdatesAreSerializable", testUpdatesAreSerializable},
		{"Agents", testAgents},
		{"Certs", testCerts},
		{"Enrollments", testEnrollments},
		{"SigningKeys", testSigningKeys},
		{"Servers", testServers},
		{"UseOnce", testUseOnce},
		{"AuditInTransactions", testAuditInTransactions},
		{"AuditWriter", testAuditWriter},
		{"Check", testCheck},
	} {
		t.Run(c.name, func(t *testing.T) { c.fn(t, open(t)) })
	}
}

var ctx = context.Background()

// update runs fn in an Update and fails the test on an error.
func update(t *testing.T, st store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := st.Update(ctx, fn); err != nil {
		t.Fatal(err)
	}
}

// ts is a time with nanoseconds, as stores must keep it.
func ts(offset time.Duration) time.Time {
	return time.Date(2026, 12, 2, 10, 0, 0, 123456789, time.UTC).Add(offset)
}

func sameTime(a, b *time.Time) bool {
	return a == nil && b == nil || a != nil && b != nil && a.Equal(*b)
}

func testConfig(t *testing.T, st store.Store) {
	if _, ok, err := st.Config(ctx, "org_id"); ok || err != nil {
		t.Fatalf("a missing key: %v %v", ok, err)
	}
	update(t, st, func(tx store.Tx) error {
		if v, err := tx.InitConfig(ctx, "org_id", "first"); err != nil || v != "first" {
			return fmt.Errorf("first InitConfig: %q %v", v, err)
		}
		if v, err := tx.InitConfig(ctx, "org_id", "second"); err != nil || v != "first" {
			return fmt.Errorf("second InitConfig returned %q %v, want the first value", v, err)
		}
		return tx.SetConfig(ctx, "policy", "a")
	})
	update(t, st, func(tx store.Tx) error { return tx.SetConfig(ctx, "policy", "b") })
	if v, ok, err := st.Config(ctx, "policy"); !ok || v != "b" || err != nil {
		t.Fatalf("SetConfig did not replace: %q %v %v", v, ok, err)
	}
	if v, _, _ := st.Config(ctx, "org_id"); v != "first" {
		t.Fatalf("org_id %q", v)
	}
}

func testUpdateIsAtomic(t *testing.T, st store.Store) {
	failed := errors.New("fail")
	err := st.Update(ctx, func(tx store.Tx) error {
		if err := tx.SetConfig(ctx, "k", "v"); err != nil {
			return err
		}
		// A transaction reads its own writes.
		if v, ok, err := tx.Config(ctx, "k"); !ok || v != "v" || err != nil {
			return fmt.Errorf("own write not visible: %q %v %v", v, ok, err)
		}
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("Update returned %v, want fn's error", err)
	}
	if _, ok, _ := st.Config(ctx, "k"); ok {
		t.Fatal("a failed Update committed its write")
	}
}

// Concurrent read-modify-write Updates lose nothing.
func testUpdatesAreSerializable(t *testing.T, st store.Store) {
	update(t, st, func(tx store.Tx) error { return tx.SetConfig(ctx, "n", "0") })
	var wg sync.WaitGroup
	const workers, each = 8, 10
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				err := st.Update(ctx, func(tx store.Tx) error {
					v, _, err := tx.Config(ctx, "n")
					if err != nil {
						return err
					}
					var n int
					fmt.Sscan(v, &n)
					return tx.SetConfig(ctx, "n", fmt.Sprint(n+1))
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if v, _, _ := st.Config(ctx, "n"); v != fmt.Sprint(workers*each) {
		t.Fatalf("counter %s after %d increments", v, workers*each)
	}
}

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

func testSigningKeys(t *testing.T, st store.Store) {
	at := ts(0)
	k1 := &store.SigningKey{Kid: "k1", Alg: "ES256", PublicJWK: `{"kty":"EC"}`, KeyRef: "signing-k1.key", Status: store.KeyActive,
		CreatedAt: at, ActivatedAt: &at}
	update(t, st, func(tx store.Tx) error { return tx.InsertSigningKey(ctx, k1) })
	k2 := &store.SigningKey{Kid: "k2", Alg: "ES256", PublicJWK: `{"kty":"EC"}`, KeyRef: "signing-k2.key", Status: store.KeyActive,
		CreatedAt: at}
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.InsertSigningKey(ctx, k2) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second active key: %v, want ErrConflict", err)
	}
	k2.Status = store.KeyStaged
	update(t, st, func(tx store.Tx) error { return tx.InsertSigningKey(ctx, k2) })
	k2.Status = store.KeyActive
	if err := st.Update(ctx, func(tx store.Tx) error { return tx.UpdateSigningKey(ctx, k2) }); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("activating a second key: %v, want ErrConflict", err)
	}
	// A rotation: deprecate, then activate, in one transaction.
	expires := ts(24 * time.Hour)
	update(t, st, func(tx store.Tx) error {
		k1.Status, k1.DeprecatedAt, k1.ExpiresAt = store.KeyDeprecated, &at, &expires
		if err := tx.UpdateSigningKey(ctx, k1); err != nil {
			return err
		}
		k2.Status, k2.ActivatedAt = store.KeyActive, &at
		return tx.UpdateSigningKey(ctx, k2)
	})
	active, _ := st.SigningKeys(ctx, store.KeyActive)
	if len(active) != 1 || active[0].Kid != "k2" || active[0].KeyRef != "signing-k2.key" || !sameTime(active[0].ActivatedAt, &at) {
		t.Fatalf("active keys: %+v", active)
	}
	both, _ := st.SigningKeys(ctx, store.KeyActive, store.KeyDeprecated)
	all, _ := st.SigningKeys(ctx)
	if len(both) != 2 || len(all) != 2 {
		t.Fatalf("keys: %d of two statuses, %d in all", len(both), len(all))
	}
	for _, k := range both {
		if k.Kid == "k1" && (!sameTime(k.ExpiresAt, &expires) || k.PublicJWK != `{"kty":"EC"}`) {
			t.Fatalf("deprecated key read back differs: %+v", k)
		}
	}
}

func testServers(t *testing.T, st store.Store) {
	update(t, st, func(tx store.Tx) error {
		if err := tx.PutServer(ctx, &store.Server{Name: "weather", Config: []byte(`{"url":"https://a"}`)}); err != nil {
			return err
		}
		return tx.PutServer(ctx, &store.Server{Name: "files", Config: []byte(`{"url":"https://b"}`)})
	})
	update(t, st, func(tx store.Tx) error {
		return tx.PutServer(ctx, &store.Server{Name: "weather", Config: []byte(`{"url":"https://c"}`)})
	})
	list, err := st.Servers(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "files" || string(list[1].Config) != `{"url":"https://c"}` {
		t.Fatalf("servers by name, replaced: %+v %v", list, err)
	}
	update(t, st, func(tx store.Tx) error {
		if found, err := tx.DeleteServer(ctx, "files"); !found || err != nil {
			return fmt.Errorf("delete: %v %v", found, err)
		}
		if found, err := tx.DeleteServer(ctx, "files"); found || err != nil {
			return fmt.Errorf("delete again: %v %v", found, err)
		}
		return nil
	})
	if list, _ := st.Servers(ctx); len(list) != 1 {
		t.Fatalf("after delete: %+v", list)
	}
}

func testUseOnce(t *testing.T, st store.Store) {
	use := func(key string, expires time.Time) (fresh bool) {
		t.Helper()
		update(t, st, func(tx store.Tx) (err error) {
			fresh, err = tx.UseOnce(ctx, key, expires)
			return err
		})
		return fresh
	}
	soon := time.Now().Add(time.Minute)
	if !use("a", soon) || use("a", soon) {
		t.Fatal("a key was not single-use")
	}
	if !use("gone", time.Now().Add(-time.Second)) || !use("gone", soon) {
		t.Fatal("an expired key is still remembered")
	}
	// A use in a failed transaction is forgotten with it.
	st.Update(ctx, func(tx store.Tx) error {
		tx.UseOnce(ctx, "rolled-back", soon)
		return errors.New("fail")
	})
	if !use("rolled-back", soon) {
		t.Fatal("a use in a rolled-back transaction was kept")
	}
	use("old", time.Now().Add(-time.Minute))
	var forgotten int64
	update(t, st, func(tx store.Tx) (err error) {
		forgotten, err = tx.ForgetUsed(ctx, time.Now())
		return err
	})
	if forgotten != 1 {
		t.Fatalf("forgot %d expired keys, want 1", forgotten)
	}
	if use("a", soon) {
		t.Fatal("ForgetUsed forgot a key that has not expired")
	}
}

// row is the audit row after h (its hash is not checked by stores).
func row(h store.AuditHead, typ string) store.AuditRow {
	return store.AuditRow{Seq: h.Seq + 1, Time: ts(0).Format("2006-01-02T15:04:05.000000000Z"), Type: typ, Actor: "system",
		Subject: "s", Result: "ok", Details: []byte(`{"a":1}`), PrevHash: h.Hash, Hash: []byte(fmt.Sprintf("hash-%d", h.Seq+1))}
}

func testAuditInTransactions(t *testing.T, st store.Store) {
	h, err := st.AuditHead(ctx)
	if err != nil || h.Seq != 0 || string(h.Hash) != string(store.GenesisHash) {
		t.Fatalf("head of an empty chain: %+v %v", h, err)
	}
	update(t, st, func(tx store.Tx) error {
		h, err := tx.AuditHead(ctx)
		if err != nil {
			return err
		}
		first := row(h, "t.one")
		second := row(store.AuditHead{Seq: first.Seq, Hash: first.Hash}, "t.two")
		return tx.AppendAudit(ctx, first, second)
	})
	st.Update(ctx, func(tx store.Tx) error {
		h, _ := tx.AuditHead(ctx)
		tx.AppendAudit(ctx, row(h, "t.rolled-back"))
		return errors.New("fail")
	})
	var rows []store.AuditRow
	if err := st.AuditRows(ctx, 1, 0, func(r store.AuditRow) error { rows = append(rows, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].Type != "t.one" || rows[1].Seq != 2 || string(rows[1].PrevHash) != "hash-1" ||
		string(rows[0].Details) != `{"a":1}` || rows[0].Time != "2026-12-02T10:00:00.123456789Z" {
		t.Fatalf("rows read back differ: %+v", rows)
	}
	if h, _ := st.AuditHead(ctx); h.Seq != 2 || string(h.Hash) != "hash-2" {
		t.Fatalf("head: %+v", h)
	}
	// A row that does not continue the chain is refused.
	err = st.Update(ctx, func(tx store.Tx) error {
		return tx.AppendAudit(ctx, row(store.AuditHead{Seq: 1, Hash: []byte("hash-1")}, "t.fork"))
	})
	if err == nil {
		t.Fatal("a row with a seq already taken was appended")
	}
	var n int
	st.AuditRows(ctx, 2, 2, func(store.AuditRow) error { n++; return nil })
	if n != 1 {
		t.Fatalf("a one-row range gave %d rows", n)
	}
}

func testAuditWriter(t *testing.T, st store.Store) {
	w := st.AuditWriter()
	for _, d := range []store.Durability{store.SyncFull, store.SyncOS} {
		err := w.Append(ctx, d, nil, func(h store.AuditHead) ([]store.AuditRow, error) {
			return []store.AuditRow{row(h, "t.batch")}, nil
		})
		if err != nil {
			t.Fatalf("durability %s: %v", d, err)
		}
	}
	h, _ := st.AuditHead(ctx)
	if h.Seq != 2 {
		t.Fatalf("head after two batches: %+v", h)
	}
	// A stale head (another writer appended meanwhile) fails the batch.
	stale := store.AuditHead{Seq: 1, Hash: []byte("hash-1")}
	err := w.Append(ctx, store.SyncFull, &stale, func(h store.AuditHead) ([]store.AuditRow, error) {
		return []store.AuditRow{row(h, "t.stale")}, nil
	})
	if err == nil {
		t.Fatal("a batch chained to a stale head was committed")
	}
	// A batch whose rows cannot be built commits nothing.
	failed := errors.New("fail")
	if err := w.Append(ctx, store.SyncFull, nil, func(store.AuditHead) ([]store.AuditRow, error) { return nil, failed }); !errors.Is(err, failed) {
		t.Fatalf("a failing build: %v", err)
	}
	// Batches and transactions interleave on one chain.
	update(t, st, func(tx store.Tx) error {
		h, _ := tx.AuditHead(ctx)
		return tx.AppendAudit(ctx, row(h, "t.tx"))
	})
	if err := w.Append(ctx, store.SyncFull, nil, func(h store.AuditHead) ([]store.AuditRow, error) {
		return []store.AuditRow{row(h, "t.after")}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if h, _ := st.AuditHead(ctx); h.Seq != 4 {
		t.Fatalf("head after interleaving: %+v", h)
	}
}

func testCheck(t *testing.T, st store.Store) {
	if err := st.Check(ctx); err != nil {
		t.Fatalf("a healthy store: %v", err)
	}
	if st.Location() == "" {
		t.Fatal("no location")
	}
}
