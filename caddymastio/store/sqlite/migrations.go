package sqlite

import "github.com/caddy-mastio/caddy-mastio/caddymastio/store"

// migration is one step of the schema. Steps are applied in order, each in
// the same transaction as the row that records it in schema_migrations, so
// a failed step leaves the database exactly as it was.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations is the whole history of the schema. Append only: never edit a
// step that has been released, add a new one.
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
	seq        INTEGER PRIMARY KEY,
	time       TEXT NOT NULL,
	event_type TEXT NOT NULL,
	actor      TEXT NOT NULL,
	subject    TEXT NOT NULL,
	result     TEXT NOT NULL,
	details    TEXT NOT NULL,
	prev_hash  BLOB NOT NULL,
	hash       BLOB NOT NULL
);
CREATE INDEX audit_events_type ON audit_events (event_type, seq);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
	SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
	SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;

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
	seq            INTEGER NOT NULL,
	hash           BLOB NOT NULL,
	time           TEXT NOT NULL,
	checkpoint     TEXT NOT NULL,
	archive_sha256 TEXT NOT NULL,
	archived_at    TEXT NOT NULL
);
CREATE TRIGGER audit_anchor_on_chain BEFORE INSERT ON audit_anchor
WHEN NOT EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq AND hash = NEW.hash)
BEGIN
	SELECT RAISE(ABORT, 'audit_anchor must name a row of the chain');
END;
CREATE TRIGGER audit_anchor_forward BEFORE UPDATE ON audit_anchor
WHEN NEW.seq <= OLD.seq OR NOT EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq AND hash = NEW.hash)
BEGIN
	SELECT RAISE(ABORT, 'audit_anchor only moves forward, to a row of the chain');
END;
CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor
BEGIN
	SELECT RAISE(ABORT, 'audit_anchor is never deleted');
END;
-- Rows are removed only up to the anchor, which is set first in the same
-- transaction: a DELETE of any other row is refused as before.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN OLD.seq > COALESCE((SELECT seq FROM audit_anchor), 0)
BEGIN
	SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused (archive with caddy mastio audit archive)');
END;
`},
	{5, "certificate issue order", `
-- The order certificates were issued in, so that "newest first" holds for
-- certificates issued at the same instant, in every database (the shared
-- statements cannot use SQLite's rowid). Writes run one at a time, so
-- MAX + 1 at insert time is unique.
ALTER TABLE agent_certs ADD COLUMN issued_seq INTEGER NOT NULL DEFAULT 0;
UPDATE agent_certs SET issued_seq = rowid;
`},
	{6, "sealed files", `
-- Material several instances share (the Org CA, signing and credential
-- keys), sealed by the Mastio under a key-encryption key the database
-- never sees. A SQLite database has one instance: the table stays empty.
CREATE TABLE sealed_files (
	name       TEXT PRIMARY KEY,
	sealed     BLOB NOT NULL,
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
