// Package store is the contract between the Mastio and its database: the
// records it keeps, grouped by what they belong to (agents and their
// certificates, enrollment sessions, the token signing keys, the audit
// chain, MCP servers, configuration values, single-use credentials), and
// the transactions that change them. It holds no SQL: package
// store/sqlite is the embedded implementation, and package
// store/storetest is the conformance suite every implementation passes.
//
// The domain packages (registry, token, audit, mastio) decide; a store
// only keeps. Every change is made in an Update, together with the audit
// rows that record it (see audit.Log.Change).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Store is an open database.
type Store interface {
	// Reader reads committed state outside any transaction.
	Reader

	// Update runs fn in one write transaction and commits it if fn returns
	// nil. Update transactions are serializable: they run one at a time
	// (and one at a time with the audit writer's batches), so what fn reads
	// through tx stays true until it commits. Before committing, the store
	// checks that the database it writes is still the one it opened.
	Update(ctx context.Context, fn func(tx Tx) error) error

	// AuditWriter is the audit log's own write path (group commit).
	AuditWriter() AuditWriter

	// Check is the readiness probe: the database can be opened anew and
	// written. Failures are *HealthError.
	Check(ctx context.Context) error

	// Location names the database for logs (a file path; never a secret).
	Location() string

	Close() error
}

// Reader reads records. A Store reads committed state; a Tx reads its own
// writes.
type Reader interface {
	// Config returns the value stored under key, and whether there is one.
	Config(ctx context.Context, key string) (string, bool, error)

	// Agents returns the agents that match f, ordered by id, each with its
	// certificates, newest first.
	Agents(ctx context.Context, f AgentFilter) ([]*Agent, error)
	// Certs returns the certificates that match f.
	Certs(ctx context.Context, f CertFilter) ([]*Cert, error)

	// Enrollment returns one session; ErrNotFound if there is none.
	Enrollment(ctx context.Context, sessionID string) (*Enrollment, error)
	// Enrollments returns the sessions that match f, newest first.
	Enrollments(ctx context.Context, f EnrollmentFilter) ([]*Enrollment, error)

	// SigningKeys returns the token signing keys with one of statuses
	// (all when none is given).
	SigningKeys(ctx context.Context, statuses ...string) ([]*SigningKey, error)

	// Servers returns the MCP servers registered at runtime, by name.
	Servers(ctx context.Context) ([]*Server, error)

	// AuditHead returns the newest audit row's seq and hash (0 and
	// GenesisHash for an empty chain).
	AuditHead(ctx context.Context) (AuditHead, error)
	// AuditRows calls fn with the rows f selects, in seq order, until fn
	// returns an error; one row at a time (memory does not grow with the
	// rows read).
	AuditRows(ctx context.Context, f AuditFilter, fn func(AuditRow) error) error
	// AuditAnchor returns the anchor of the last archive (Seq 0 when
	// nothing was archived).
	AuditAnchor(ctx context.Context) (AuditAnchor, error)

	// SealedFile returns the sealed content stored under name
	// (ErrNotFound if none); SealedFiles those whose names start with
	// prefix. Contents are sealed by the caller (encrypted under a key the
	// store never sees): the Org CA, signing and credential keys that
	// several instances share.
	SealedFile(ctx context.Context, name string) ([]byte, error)
	SealedFiles(ctx context.Context, prefix string) (map[string][]byte, error)
}

// Tx is a write transaction (see Store.Update).
type Tx interface {
	Reader

	// SetConfig stores value under key, replacing any previous value.
	SetConfig(ctx context.Context, key, value string) error
	// InitConfig stores value under key unless the key has a value, and
	// returns the value now stored: facts fixed at first start.
	InitConfig(ctx context.Context, key, value string) (string, error)

	// InsertAgent adds an agent (its Certificates are ignored); ErrConflict
	// if its id or SPIFFE ID is taken.
	InsertAgent(ctx context.Context, a *Agent) error
	// UpdateAgent replaces the stored agent with a's fields (by AgentID,
	// Certificates ignored); ErrNotFound if there is none.
	UpdateAgent(ctx context.Context, a *Agent) error
	// InsertCert adds a certificate of an existing agent; ErrConflict if
	// its SHA-256 is taken.
	InsertCert(ctx context.Context, c *Cert) error
	// UpdateCert replaces the status, grace and retirement of a stored
	// certificate (by SHA256); ErrNotFound if there is none.
	UpdateCert(ctx context.Context, c *Cert) error

	// InsertEnrollment adds a session; ErrConflict if its id is taken.
	InsertEnrollment(ctx context.Context, e *Enrollment) error
	// UpdateEnrollment replaces the stored session's decision fields
	// (status, decided, agent, capabilities, groups, certificate,
	// rejection reason); ErrNotFound if there is none.
	UpdateEnrollment(ctx context.Context, e *Enrollment) error

	// InsertSigningKey adds a key; ErrConflict if its kid is taken, or if
	// it is active while another key is.
	InsertSigningKey(ctx context.Context, k *SigningKey) error
	// UpdateSigningKey replaces a key's status and times (by Kid);
	// ErrConflict if that makes a second key active.
	UpdateSigningKey(ctx context.Context, k *SigningKey) error

	// PutServer adds or replaces an MCP server.
	PutServer(ctx context.Context, s *Server) error
	// DeleteServer removes one; false if there was none.
	DeleteServer(ctx context.Context, name string) (bool, error)

	// UseOnce records key as used until expires and reports whether it
	// was fresh: false if it is recorded already and has not expired.
	UseOnce(ctx context.Context, key string, expires time.Time) (bool, error)
	// ForgetUsed forgets used keys that expired at or before now.
	ForgetUsed(ctx context.Context, now time.Time) (int64, error)

	// AppendAudit adds rows to the audit chain; they must continue it from
	// the AuditHead this transaction reads. Audit rows are never changed,
	// and removed only by ArchiveAudit.
	AppendAudit(ctx context.Context, rows ...AuditRow) error
	// ArchiveAudit makes a the chain's anchor and removes every row up to
	// a.Seq, returning how many. a must name a stored row (seq and hash)
	// after the current anchor: ErrNotFound if row a.Seq is not stored
	// (never was, or archived already), ErrConflict if its hash is not
	// a.Hash. The head's seq and hash stay the AuditHead even when the
	// head row itself is removed.
	ArchiveAudit(ctx context.Context, a AuditAnchor) (int64, error)

	// PutSealedFile stores sealed content under name, replacing any;
	// DeleteSealedFile removes it (false if there was none).
	PutSealedFile(ctx context.Context, name string, sealed []byte) error
	DeleteSealedFile(ctx context.Context, name string) (bool, error)

	// Announce tells the other processes sharing the store, once this
	// transaction commits (and only then), that kind (an audit event type)
	// happened to subject. A store that one process owns does nothing.
	Announce(ctx context.Context, kind, subject string) error
}

// AuditWriter commits batches of audit rows, one transaction each, on a
// connection kept for it. Only one batch runs at a time.
type AuditWriter interface {
	// Append runs one write transaction: it calls rows with the chain head
	// (read in the transaction; or head, when the caller knows it — a
	// stale head makes the insert fail and the caller try again without
	// one; a store whose head several processes move may always read it),
	// inserts what rows returns, and commits with durability d.
	Append(ctx context.Context, d Durability, head *AuditHead, rows func(AuditHead) ([]AuditRow, error)) error
	// Close releases the writer's connection.
	Close() error
}

// Durability is how durable a committed audit batch is when Append
// returns.
type Durability int32

const (
	// SyncFull: on disk (fsynced); survives a power loss.
	SyncFull Durability = iota
	// SyncOS: handed to the operating system; survives a crash of the
	// process, not of the machine.
	SyncOS
)

// String is the configuration name of d.
func (d Durability) String() string {
	if d == SyncOS {
		return "os"
	}
	return "full"
}

// Errors of the contract; implementations wrap them.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
	// ErrSchemaTooNew: the database was written by a newer caddy-mastio.
	ErrSchemaTooNew = errors.New("database schema is newer than this binary supports")
)

// HealthError is why the database is not usable. Reason is a short token
// safe to show to anonymous callers (it names no path); Error() carries
// the location and the cause for the logs.
type HealthError struct {
	Reason   string // missing | replaced | not_writable | locked | unavailable
	Location string
	Err      error
}

func (e *HealthError) Error() string {
	return fmt.Sprintf("database %s: %s: %v", e.Location, e.Reason, e.Err)
}

func (e *HealthError) Unwrap() error { return e.Err }

// Unavailable reports whether err is the database being unreachable or
// unusable (a *HealthError): the request is refused with 503, not 500,
// and nothing was changed.
func Unavailable(err error) bool {
	var he *HealthError
	return errors.As(err, &he)
}

// Feed is a store shared by several processes: it delivers what the others
// Announce.
type Feed interface {
	// Listen calls fn with each change another process announces, until
	// ctx ends. After (re)connecting — when changes may have been missed —
	// it calls fn with Kind ResyncAll. It calls lost with the cause each
	// time the feed is lost or cannot be had. Both run on Listen's
	// goroutine.
	Listen(ctx context.Context, fn func(Change), lost func(error))
}

// Change is an announced change (see Tx.Announce).
type Change struct {
	Kind    string // the audit event type, or ResyncAll
	Subject string
}

// ResyncAll is the Change that asks for every cache to be read again.
const ResyncAll = "resync"

// Exclusive is a store several processes share that can run something
// with every other process of it kept out of Exclusive meanwhile (their
// Updates still run): a first start that creates shared material.
type Exclusive interface {
	Exclusive(ctx context.Context, fn func() error) error
}

// Snapshotter is a store that can copy itself, consistently and while it
// serves, into a new file (the embedded SQLite database). A store without
// it is backed up with its own tools (Postgres: pg_dump).
type Snapshotter interface {
	// SnapshotTo writes a copy of the database as of one instant to a new
	// file at path, mode 0600.
	SnapshotTo(ctx context.Context, path string) error
	// SchemaVersion is the version of the database's schema.
	SchemaVersion(ctx context.Context) (int, error)
}

// Migration names one step of a store's schema.
type Migration struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
}
