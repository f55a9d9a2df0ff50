package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Signing keys, MCP servers, single-use credentials and the audit chain.

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
	if err := st.AuditRows(ctx, store.AuditSeqs(1, 0), func(r store.AuditRow) error { rows = append(rows, r); return nil }); err != nil {
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
	st.AuditRows(ctx, store.AuditSeqs(2, 2), func(store.AuditRow) error { n++; return nil })
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
	// A stale head (another writer appended meanwhile): the batch fails,
	// or the store chains it to the real head; never to the stale one.
	stale := store.AuditHead{Seq: 1, Hash: []byte("hash-1")}
	err := w.Append(ctx, store.SyncFull, &stale, func(h store.AuditHead) ([]store.AuditRow, error) {
		return []store.AuditRow{row(h, "t.stale")}, nil
	})
	staleCommitted := int64(0)
	if err == nil {
		var got []store.AuditRow
		st.AuditRows(ctx, store.AuditSeqs(3, 3), func(r store.AuditRow) error { got = append(got, r); return nil })
		if len(got) != 1 || string(got[0].PrevHash) != "hash-2" {
			t.Fatalf("a batch given a stale head was committed off the chain: %+v", got)
		}
		staleCommitted = 1
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
	if h, _ := st.AuditHead(ctx); h.Seq != 4+staleCommitted {
		t.Fatalf("head after interleaving: %+v", h)
	}
	testAuditWriterLargeBatches(t, st, w)
}

// testAuditWriterLargeBatches: a batch larger than one insert statement
// carries is stored whole, in order, and one that fails in its last rows
// stores none of its first.
func testAuditWriterLargeBatches(t *testing.T, st store.Store, w store.AuditWriter) {
	chainOf := func(h store.AuditHead, n int, typ string) []store.AuditRow {
		rows := make([]store.AuditRow, n)
		for i := range rows {
			rows[i] = row(h, fmt.Sprintf("%s.%d", typ, i))
			rows[i].Details = []byte(fmt.Sprintf(`{"i":%d}`, i))
			h = store.AuditHead{Seq: rows[i].Seq, Hash: rows[i].Hash}
		}
		return rows
	}
	before, _ := st.AuditHead(ctx)
	var want []store.AuditRow
	if err := w.Append(ctx, store.SyncOS, nil, func(h store.AuditHead) ([]store.AuditRow, error) {
		want = chainOf(h, 37, "t.large")
		return want, nil
	}); err != nil {
		t.Fatalf("a batch of 37 rows: %v", err)
	}
	var got []store.AuditRow
	st.AuditRows(ctx, store.AuditSeqs(before.Seq+1, before.Seq+37), func(r store.AuditRow) error { got = append(got, r); return nil })
	if len(got) != len(want) {
		t.Fatalf("a batch of 37 rows stored %d", len(got))
	}
	for i := range want {
		if got[i].Seq != want[i].Seq || got[i].Type != want[i].Type || string(got[i].Details) != string(want[i].Details) ||
			string(got[i].PrevHash) != string(want[i].PrevHash) || string(got[i].Hash) != string(want[i].Hash) {
			t.Fatalf("row %d of a large batch: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// The 30th row repeats a stored seq: nothing of the batch is stored.
	head, _ := st.AuditHead(ctx)
	err := w.Append(ctx, store.SyncOS, nil, func(h store.AuditHead) ([]store.AuditRow, error) {
		rows := chainOf(h, 33, "t.doomed")
		rows[29].Seq = before.Seq + 1
		return rows, nil
	})
	if err == nil {
		t.Fatal("a batch repeating a stored seq was committed")
	}
	if h, _ := st.AuditHead(ctx); h.Seq != head.Seq {
		t.Fatalf("a failed batch stored rows: head %d, was %d", h.Seq, head.Seq)
	}
	var stray int
	st.AuditRows(ctx, store.AuditSeqs(head.Seq+1, head.Seq+40), func(store.AuditRow) error { stray++; return nil })
	if stray != 0 {
		t.Fatalf("a failed batch left %d rows", stray)
	}
}

func testSealedFiles(t *testing.T, st store.Store) {
	if _, err := st.SealedFile(ctx, "pki/org-ca.key"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a missing sealed file: %v", err)
	}
	update(t, st, func(tx store.Tx) error {
		for name, v := range map[string]string{"pki/org-ca.key": "one", "pki/org-ca.crt": "two", "keys/signing-x": "three"} {
			if err := tx.PutSealedFile(ctx, name, []byte(v)); err != nil {
				return err
			}
		}
		return tx.PutSealedFile(ctx, "pki/org-ca.key", []byte{0, 1, 255}) // replaced, binary
	})
	if b, err := st.SealedFile(ctx, "pki/org-ca.key"); err != nil || string(b) != "\x00\x01\xff" {
		t.Fatalf("read back: %q %v", b, err)
	}
	all, err := st.SealedFiles(ctx, "pki/")
	if err != nil || len(all) != 2 || string(all["pki/org-ca.crt"]) != "two" {
		t.Fatalf("by prefix: %v %v", all, err)
	}
	var removed, again bool
	update(t, st, func(tx store.Tx) (err error) {
		if removed, err = tx.DeleteSealedFile(ctx, "keys/signing-x"); err != nil {
			return err
		}
		again, err = tx.DeleteSealedFile(ctx, "keys/signing-x")
		return err
	})
	if !removed || again {
		t.Fatalf("delete: %v, again: %v", removed, again)
	}
}
