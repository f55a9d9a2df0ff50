package postgres

import "github.com/caddy-mastio/caddy-mastio/caddymastio/store"

// migration is one step of the schema, applied in one transaction with the
// row that records it.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations are SQLite's (store/sqlite), version for version, in
// Postgres's words: BYTEA for BLOB, BIGINT seqs, triggers as plpgsql
// functions. Append only.
var migrations = []migration{
	{1, "initial schema", `
CREATE TABLE config (
	key        TEXT PRIMARY KEY,
	value      TEXT NOT NULL,
	updated_at TEXT NOT NULL
);

-- Agents registered with this Mastio. agent_id is "<org>::<name>".
CREATE TABLE agents (
	agent_id          TEXT PRIMARY KEY,
	name              TEXT NOT NULL,
	display_name      TEXT NOT NULL DEFAULT '',
	spiffe_id         TEXT NOT NULL UNIQUE,
	status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
	capabilities      TEXT NOT NULL DEFAULT '[]',
	groups_json       TEXT NOT NULL DEFAULT '[]',
	enrollment_method TEXT NOT NULL,
	dpop_jkt          TEXT,
	created_at        TEXT NOT NULL,
	updated_at        TEXT NOT NULL,
	revoked_at        TEXT,
	revoked_reason    TEXT
);

-- Certificates issued to agents. cert_sha256 (hex SHA-256 of the leaf DER)
-- is the pin a client certificate must match.
CREATE TABLE agent_certs (
	cert_sha256 TEXT PRIMARY KEY,
	agent_id    TEXT NOT NULL REFERENCES agents (agent_id),
	serial      TEXT NOT NULL,
	cert_pem    TEXT NOT NULL,
	not_before  TEXT NOT NULL,
	not_after   TEXT NOT NULL,
	status      TEXT NOT NULL CHECK (status IN ('active', 'grace', 'retired')),
	grace_until TEXT,
	created_at  TEXT NOT NULL,
	retired_at  TEXT
);
CREATE INDEX agent_certs_agent ON agent_certs (agent_id);

-- Enrollment sessions started by agents and decided by an administrator.
CREATE TABLE enrollments (
	session_id       TEXT PRIMARY KEY,
	status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
	pubkey_pem       TEXT NOT NULL,
	pubkey_sha256    TEXT NOT NULL,
	requester_name   TEXT NOT NULL,
	requester_email  TEXT NOT NULL,
	reason           TEXT NOT NULL DEFAULT '',
	device_info      TEXT NOT NULL DEFAULT '',
	dpop_jkt         TEXT,
	remote_ip        TEXT NOT NULL DEFAULT '',
	created_at       TEXT NOT NULL,
	expires_at       TEXT NOT NULL,
	decided_at       TEXT,
	decided_by       TEXT,
	agent_id         TEXT,
	capabilities     TEXT,
	groups_json      TEXT,
	cert_pem         TEXT,
	rejection_reason TEXT
);
CREATE INDEX enrollments_status ON enrollments (status, expires_at);

-- The access-token signing key ring. Private keys live in the key store
-- under key_ref, never in this table.
CREATE TABLE signing_keys (
	kid           TEXT PRIMARY KEY,
	alg           TEXT NOT NULL,
	public_jwk    TEXT NOT NULL,
	key_ref       TEXT NOT NULL,
	status        TEXT NOT NULL CHECK (status IN ('staged', 'active', 'deprecated')),
	created_at    TEXT NOT NULL,
	activated_at  TEXT,
	deprecated_at TEXT,
	expires_at    TEXT
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (status) WHERE status = 'active';

-- The append-only, hash-chained audit log (see package audit).
CREATE TABLE audit_events (
	seq        BIGINT PRIMARY KEY,
	time       TEXT NOT NULL,
	event_type TEXT NOT NULL,
	actor      TEXT NOT NULL,
	subject    TEXT NOT NULL,
	result     TEXT NOT NULL,
	details    TEXT NOT NULL,
	prev_hash  BYTEA NOT NULL,
	hash       BYTEA NOT NULL
);
CREATE INDEX audit_events_type ON audit_events (event_type, seq);
CREATE FUNCTION audit_events_no_update() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	RAISE EXCEPTION 'audit_events is append-only: UPDATE refused';
	RETURN NEW;
END $fn$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_no_update();
CREATE FUNCTION audit_events_no_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	RAISE EXCEPTION 'audit_events is append-only: DELETE refused';
	RETURN OLD;
END $fn$;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_no_delete();

-- One row that the readiness probe rewrites to prove the file is writable.
CREATE TABLE health_probe (
	id         INTEGER PRIMARY KEY CHECK (id = 1),
	checked_at TEXT NOT NULL
);
`},
	{2, "mcp servers", `
-- MCP servers registered through the admin API (servers in the Caddyfile
-- or JSON config are not stored). config is the JSON of the server's
-- settings; credential values are placeholders or key-store references,
-- never literal secrets.
CREATE TABLE mcp_servers (
	name       TEXT PRIMARY KEY,
	config     TEXT NOT NULL,
	created_at TEXT NOT NULL,
	updated_at TEXT NOT NULL
);
`},
	{3, "single-use credentials", `
-- Credentials that may be used once (client assertion ids), kept until
-- they expire so that a restart or crash forgets none.
CREATE TABLE used_credentials (
	key        TEXT PRIMARY KEY,
	expires_at TEXT NOT NULL
);
CREATE INDEX used_credentials_expiry ON used_credentials (expires_at);
`},
	{4, "audit archive anchor", `
-- The anchor left by the last archive (caddy mastio audit archive): the
-- last archived row's seq, hash and time with the Mastio's signed
-- checkpoint of it. The rows after it link to its hash. One row, which
-- only moves forward and only to a row of the chain.
CREATE TABLE audit_anchor (
	id             INTEGER PRIMARY KEY CHECK (id = 1),
	seq            BIGINT NOT NULL,
	hash           BYTEA NOT NULL,
	time           TEXT NOT NULL,
	checkpoint     TEXT NOT NULL,
	archive_sha256 TEXT NOT NULL,
	archived_at    TEXT NOT NULL
);
CREATE FUNCTION audit_anchor_on_chain() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq AND hash = NEW.hash) THEN
		RAISE EXCEPTION 'audit_anchor must name a row of the chain';
	END IF;
	RETURN NEW;
END $fn$;
CREATE TRIGGER audit_anchor_on_chain BEFORE INSERT ON audit_anchor FOR EACH ROW EXECUTE FUNCTION audit_anchor_on_chain();
CREATE FUNCTION audit_anchor_forward() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF NEW.seq <= OLD.seq OR NOT EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq AND hash = NEW.hash) THEN
		RAISE EXCEPTION 'audit_anchor only moves forward, to a row of the chain';
	END IF;
	RETURN NEW;
END $fn$;
CREATE TRIGGER audit_anchor_forward BEFORE UPDATE ON audit_anchor FOR EACH ROW EXECUTE FUNCTION audit_anchor_forward();
CREATE FUNCTION audit_anchor_no_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	RAISE EXCEPTION 'audit_anchor is never deleted';
	RETURN OLD;
END $fn$;
CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor FOR EACH ROW EXECUTE FUNCTION audit_anchor_no_delete();
-- Rows are removed only up to the anchor, which is set first in the same
-- transaction: a DELETE of any other row is refused as before.
DROP TRIGGER audit_events_no_delete ON audit_events;
DROP FUNCTION audit_events_no_delete();
CREATE FUNCTION audit_events_no_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
	IF OLD.seq > COALESCE((SELECT seq FROM audit_anchor), 0) THEN
		RAISE EXCEPTION 'audit_events is append-only: DELETE refused (archive with caddy mastio audit archive)';
	END IF;
	RETURN OLD;
END $fn$;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_events_no_delete();
`},
	{5, "certificate issue order", `
ALTER TABLE agent_certs ADD COLUMN issued_seq BIGINT NOT NULL DEFAULT 0;
UPDATE agent_certs SET issued_seq = o.n FROM (SELECT cert_sha256, row_number() OVER (ORDER BY created_at) AS n FROM agent_certs) AS o
	WHERE agent_certs.cert_sha256 = o.cert_sha256;
`},
	{6, "sealed files", `
CREATE TABLE sealed_files (
	name       TEXT PRIMARY KEY,
	sealed     BYTEA NOT NULL,
	updated_at TEXT NOT NULL
);
`},
	{7, "certificate issue order index", `
-- Issuing a certificate numbers it MAX(issued_seq) + 1: an index keeps
-- that a lookup, not a scan of every certificate ever issued.
CREATE INDEX agent_certs_issued_seq ON agent_certs (issued_seq);
`},
}

// LatestVersion is the newest schema version this binary knows.
func LatestVersion() int { return migrations[len(migrations)-1].version }

// Pending returns the steps a database at schema version would have
// applied by Open, in order.
func Pending(version int) []store.Migration {
	var out []store.Migration
	for _, m := range migrations {
		if m.version > version {
			out = append(out, store.Migration{Version: m.version, Name: m.name})
		}
	}
	return out
}
