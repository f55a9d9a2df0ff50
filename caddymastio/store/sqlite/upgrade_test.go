package sqlite

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// released are the schema versions of released binaries, each with the
// SHA-256 of its migration's SQL: a released step is never edited (a
// database that ran the old text would differ from one that runs the
// new), so changing one fails here. Add a line when a release adds a step.
var released = map[int]string{
	1: "75fc39953ee01f2d4e99a9527dacd93d72e2e3569129d2ac89ad92b006a9fee0",
	2: "ddaba5f7def9f18c7fd95e33670b52e53e3462d5a0f35eb31181751224e1a6fe",
	3: "4161dc9e145d000ab327ea008b4b3e37ec3130bd6d0fd13d8b85a0aef03b0c9e",
	4: "964fb60b01b01c490065d445e1def4d7b8d4073fe09ea677b614d223095048f2",
	5: "4f5db5106a166e5eba2c5eed5f8e2d9e299295b9bde72ff1f8166d83161ce1d3",
	6: "51efcee529046d020eb48874447259321d76eae64f063057d6960a5f68797efd",
	7: "b31eb53d210b252a08373f1640bf39d10f792e29a43aa1da5b4acee02baf8aa6",
}

func TestReleasedMigrationsAreNeverEdited(t *testing.T) {
	for _, m := range migrations {
		sum := sha256.Sum256([]byte(m.sql))
		want, ok := released[m.version]
		if !ok {
			t.Errorf("migration %d (%s) is not in released: add it with its SHA-256 %x once it ships", m.version, m.name, sum)
			continue
		}
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("migration %d (%s) has SHA-256 %s, released as %s: add a new step instead of editing this one", m.version, m.name, got, want)
		}
	}
}

// atVersion creates a database at path as the binary of schema version v
// left it.
func atVersion(t *testing.T, path string, v int) {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path, false))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations[:v] {
		if _, err := db.Exec(m.sql); err != nil {
			t.Fatalf("migration %d: %v", m.version, err)
		}
		db.Exec(`INSERT INTO schema_migrations VALUES (?, ?, '2026-01-01T00:00:00Z')`, m.version, m.name)
	}
}

// fixture is what a binary of each schema version wrote: every step's
// rows go in at the version that introduced their table or column.
type fixture struct {
	since int
	sql   string
	args  []any
}

const ts = "2026-01-02T03:04:05.000000000Z"

func fixtures(t *testing.T) (rows []fixture, audits []audit.Record) {
	prev := store.GenesisHash
	for seq := int64(1); seq <= 6; seq++ {
		r := audit.Record{Seq: seq, Time: time.Date(2026, 1, 2, 3, 4, int(seq), 0, time.UTC), Type: "agent.created", Actor: "admin",
			Subject: fmt.Sprintf("orga::a%d", seq), Result: "ok", Details: json.RawMessage(fmt.Sprintf(`{"n":%d,"name":"é\u2028"}`, seq)), PrevHash: prev}
		h, err := r.ComputeHash()
		if err != nil {
			t.Fatal(err)
		}
		r.Hash, prev = h, h
		audits = append(audits, r)
		rows = append(rows, fixture{1, `INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			[]any{r.Seq, r.Time.Format(audit.TimeFormat), r.Type, r.Actor, r.Subject, r.Result, string(r.Details), r.PrevHash, r.Hash}})
	}
	rows = append(rows,
		fixture{1, `INSERT INTO config VALUES ('org_id', 'orga', ?), ('org_ca_sha256', 'abc', ?)`, []any{ts, ts}},
		fixture{1, `INSERT INTO agents (agent_id, name, spiffe_id, status, capabilities, enrollment_method, dpop_jkt, created_at, updated_at)
			VALUES ('orga::a1', 'a1', 'spiffe://mastio.local/orga/a1', 'active', '["mcp:*"]', 'admin', 'jkt1', ?, ?),
			       ('orga::a2', 'a2', 'spiffe://mastio.local/orga/a2', 'revoked', '[]', 'enrollment', NULL, ?, ?)`, []any{ts, ts, ts, ts}},
		fixture{1, `INSERT INTO agent_certs (cert_sha256, agent_id, serial, cert_pem, not_before, not_after, status, created_at)
			VALUES ('c-old', 'orga::a1', '01', 'PEM1', ?, '2027-01-01T00:00:00.000000000Z', 'grace', ?),
			       ('c-new', 'orga::a1', '02', 'PEM2', ?, '2027-01-01T00:00:00.000000000Z', 'active', ?)`, []any{ts, ts, ts, ts}},
		fixture{1, `INSERT INTO enrollments (session_id, status, pubkey_pem, pubkey_sha256, requester_name, requester_email, created_at, expires_at)
			VALUES ('sess1', 'pending', 'PUB', 'sum', 'Ada', 'ada@orga.example', ?, '2027-01-01T00:00:00.000000000Z')`, []any{ts}},
		fixture{1, `INSERT INTO signing_keys (kid, alg, public_jwk, key_ref, status, created_at) VALUES ('k1', 'ES256', '{}', 'token-k1', 'active', ?)`, []any{ts}},
		fixture{2, `INSERT INTO mcp_servers VALUES ('files', '{"url":"http://127.0.0.1:1/mcp"}', ?, ?)`, []any{ts, ts}},
		fixture{3, `INSERT INTO used_credentials VALUES ('jti:1', '2999-01-01T00:00:00.000000000Z')`, nil},
		// v4: an archive took the first two rows.
		fixture{4, `INSERT INTO audit_anchor VALUES (1, 2, ?, ?, 'jws', 'sha', ?)`, []any{audits[1].Hash, audits[1].Time.Format(audit.TimeFormat), ts}},
		fixture{4, `DELETE FROM audit_events WHERE seq <= 2`, nil},
		// v5 binaries number certificates as they issue them.
		fixture{5, `UPDATE agent_certs SET issued_seq = CASE cert_sha256 WHEN 'c-old' THEN 1 ELSE 2 END`, nil},
		fixture{6, `INSERT INTO sealed_files VALUES ('pki/org-ca.key', x'00', ?)`, []any{ts}},
	)
	return rows, audits
}

// TestUpgradeFromEveryReleasedSchema opens, with this binary, a database
// as each earlier release left it, with data in every table that release
// had: every record reads back, the audit chain verifies (from the archive
// anchor where there is one), and the upgraded database takes new writes.
func TestUpgradeFromEveryReleasedSchema(t *testing.T) {
	ctx := context.Background()
	for v := 1; v < LatestVersion(); v++ {
		t.Run(fmt.Sprintf("from_v%d", v), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mastio.db")
			atVersion(t, path, v)
			rows, _ := fixtures(t)
			raw, err := sql.Open("sqlite", dsn(path, true))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range rows {
				if f.since <= v {
					if _, err := raw.Exec(f.sql, f.args...); err != nil {
						t.Fatalf("fixture (v%d) %s: %v", f.since, strings.Fields(f.sql)[:3], err)
					}
				}
			}
			raw.Close()

			// What migrate --check reads first.
			if _, got, err := Peek(ctx, path); err != nil || got != v {
				t.Fatalf("Peek = %d, %v; want %d", got, err, v)
			}
			if p := Pending(v); len(p) != LatestVersion()-v || p[0].Version != v+1 {
				t.Fatalf("Pending(%d) = %+v", v, p)
			}
			db, err := Open(ctx, path)
			if err != nil {
				t.Fatalf("upgrading from v%d: %v", v, err)
			}
			defer db.Close()
			if got, _ := db.SchemaVersion(ctx); got != LatestVersion() {
				t.Fatalf("schema %d after the upgrade", got)
			}
			if org, _, _ := db.Config(ctx, "org_id"); org != "orga" {
				t.Fatalf("org_id %q", org)
			}
			agents, err := db.Agents(ctx, store.AgentFilter{})
			if err != nil || len(agents) != 2 || agents[0].Status != "active" || agents[1].Status != "revoked" {
				t.Fatalf("agents: %v %+v", err, agents)
			}
			if c := agents[0].Certificates; len(c) != 2 || c[0].SHA256 != "c-new" {
				t.Fatalf("a1's certificates, newest first: %+v", c)
			}
			if e, err := db.Enrollment(ctx, "sess1"); err != nil || e.RequesterEmail != "ada@orga.example" {
				t.Fatalf("enrollment: %v %+v", err, e)
			}
			if k, err := db.SigningKeys(ctx); err != nil || len(k) != 1 || k[0].Kid != "k1" {
				t.Fatalf("signing keys: %v %+v", err, k)
			}
			res, err := audit.Verify(ctx, db, 1, 0)
			if err != nil || !res.OK() || res.To != 6 {
				t.Fatalf("audit chain after the upgrade: %v %+v", err, res)
			}
			if want := int64(6); v >= 4 && (res.Anchor.Seq != 2 || res.Checked != want-2) {
				t.Fatalf("from the anchor: %+v", res)
			}

			// The upgraded database takes new records.
			log := audit.Open(db, audit.Options{})
			defer log.Close()
			if _, err := log.Append(ctx, audit.Event{Type: "system.upgraded", Actor: "system", Subject: "db"}); err != nil {
				t.Fatal(err)
			}
			if err := db.Update(ctx, func(tx store.Tx) error {
				ok, err := tx.UseOnce(ctx, "jti:2", time.Now().Add(time.Hour))
				if !ok {
					return fmt.Errorf("UseOnce refused a new key")
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if res, err := audit.Verify(ctx, db, 1, 0); err != nil || !res.OK() || res.To != 7 {
				t.Fatalf("the chain after a new row: %v %+v", err, res)
			}
			if p := Pending(LatestVersion()); len(p) != 0 {
				t.Fatalf("pending after the upgrade: %+v", p)
			}
		})
	}
}
