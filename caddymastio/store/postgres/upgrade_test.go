package postgres

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
)

// released are the schema versions of released binaries with the SHA-256
// of each step's SQL: a released step is never edited (see the same test
// of store/sqlite).
var released = map[int]string{
	1: "d3b5273dc32a043f0878c5067b19390af5cb584f6b9030730fda152ee1f6dd56",
	2: "ddaba5f7def9f18c7fd95e33670b52e53e3462d5a0f35eb31181751224e1a6fe",
	3: "4161dc9e145d000ab327ea008b4b3e37ec3130bd6d0fd13d8b85a0aef03b0c9e",
	4: "f9401445a95dcb742f30f2214e759ea51d3c88cc1636605461afc8ee9d6d3844",
	5: "d184c0b5295832bd7190ad8c9604914751cc847641433e26138694f7cbf2a07a",
	6: "c8039229b395fdbc56d466a4b32d127c6669fe106a41b963b8ef6dc0256e3d71",
	7: "b31eb53d210b252a08373f1640bf39d10f792e29a43aa1da5b4acee02baf8aa6",
}

func TestReleasedMigrationsAreNeverEdited(t *testing.T) {
	for _, m := range migrations {
		sum := sha256.Sum256([]byte(m.sql))
		if got, want := hex.EncodeToString(sum[:]), released[m.version]; got != want {
			t.Errorf("migration %d (%s) has SHA-256 %s, released as %q: add a new step instead of editing a released one", m.version, m.name, got, want)
		}
	}
}

// TestUpgradeFromEveryReleasedSchema opens a Postgres database as each
// earlier release left it, with data: the records read back, the audit
// chain verifies (from the archive anchor where there is one) and new
// rows go in.
func TestUpgradeFromEveryReleasedSchema(t *testing.T) {
	ctx := context.Background()
	for v := 1; v < LatestVersion(); v++ {
		t.Run(fmt.Sprintf("from_v%d", v), func(t *testing.T) {
			url := pgtest.Database(t)
			raw, err := sql.Open("pgx", url)
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			exec := func(q string, args ...any) {
				t.Helper()
				if _, err := raw.Exec(q, args...); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)`)
			for _, m := range migrations[:v] {
				exec(m.sql)
				exec(`INSERT INTO schema_migrations VALUES ($1, $2, '2026-01-01T00:00:00Z')`, m.version, m.name)
			}
			const ts = "2026-01-02T03:04:05.000000000Z"
			prev := store.GenesisHash
			var hashes [][]byte
			for seq := int64(1); seq <= 5; seq++ {
				r := audit.Record{Seq: seq, Time: time.Date(2026, 1, 2, 3, 4, int(seq), 0, time.UTC), Type: "agent.created", Actor: "admin",
					Subject: "orga::a1", Result: "ok", Details: json.RawMessage(`{"n":1}`), PrevHash: prev}
				h, _ := r.ComputeHash()
				exec(`INSERT INTO audit_events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
					r.Seq, r.Time.Format(audit.TimeFormat), r.Type, r.Actor, r.Subject, r.Result, string(r.Details), prev, h)
				prev = h
				hashes = append(hashes, h)
			}
			exec(`INSERT INTO config VALUES ('org_id', 'orga', $1)`, ts)
			exec(`INSERT INTO agents (agent_id, name, spiffe_id, status, capabilities, enrollment_method, created_at, updated_at)
				VALUES ('orga::a1', 'a1', 'spiffe://mastio.local/orga/a1', 'active', '[]', 'admin', $1, $1)`, ts)
			exec(`INSERT INTO agent_certs (cert_sha256, agent_id, serial, cert_pem, not_before, not_after, status, created_at)
				VALUES ('c1', 'orga::a1', '01', 'PEM', $1, '2027-01-01T00:00:00.000000000Z', 'active', $1)`, ts)
			if v >= 2 {
				exec(`INSERT INTO mcp_servers VALUES ('files', '{}', $1, $1)`, ts)
			}
			if v >= 4 {
				exec(`INSERT INTO audit_anchor VALUES (1, 2, $1, $2, 'jws', 'sha', $2)`, hashes[1], ts)
				exec(`DELETE FROM audit_events WHERE seq <= 2`)
			}
			db, err := Open(ctx, url)
			if err != nil {
				t.Fatalf("upgrading from v%d: %v", v, err)
			}
			defer db.Close()
			if got, _ := db.SchemaVersion(ctx); got != LatestVersion() {
				t.Fatalf("schema %d", got)
			}
			agents, err := db.Agents(ctx, store.AgentFilter{})
			if err != nil || len(agents) != 1 || len(agents[0].Certificates) != 1 {
				t.Fatalf("agents: %v %+v", err, agents)
			}
			log := audit.Open(db, audit.Options{})
			defer log.Close()
			if _, err := log.Append(ctx, audit.Event{Type: "system.upgraded", Actor: "system", Subject: "db"}); err != nil {
				t.Fatal(err)
			}
			res, err := audit.Verify(ctx, db, 1, 0)
			if err != nil || !res.OK() || res.To != 6 || (v >= 4 && res.Anchor.Seq != 2) {
				t.Fatalf("audit chain after the upgrade: %v %+v", err, res)
			}
		})
	}
}
