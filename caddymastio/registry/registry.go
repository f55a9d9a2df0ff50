// Package registry is the agent registry: agents, the certificates issued
// to them (each pinned by the SHA-256 of its DER), enrollment sessions, and
// the in-memory view of pins that the TLS handshake and every request
// consult. Every change is committed together with its audit row, and the
// in-memory view is updated before the change returns, so a revoked or
// rotated-out certificate stops working on the very next request.
package registry

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// Config wires a Registry.
type Config struct {
	DB    *sql.DB
	Audit *audit.Log
	CA    *pki.CA
	// Org is the organisation id, fixed for the data directory.
	Org string
	// BeforeCommit runs before each commit (the store's file check).
	BeforeCommit func() error
	// Now returns the time; default time.Now.
	Now func() time.Time
}

// Policy holds the settings of the config in force, which may change on a
// reload while the Registry lives on.
type Policy struct {
	TrustDomain       string
	AgentCertLifetime time.Duration
	EnrollmentTTL     time.Duration
}

// Registry is safe for concurrent use.
type Registry struct {
	cfg Config

	mu     sync.RWMutex
	pins   map[[32]byte]pinEntry
	agents map[string]agentEntry

	// gates order credential changes against answers being delivered
	// (see Deliver); watchers hear of every change (see OnChange).
	gates    [64]sync.RWMutex
	watchMu  sync.Mutex
	watchers []func(agentID string)
}

type certState uint8

const (
	certActive certState = iota
	certGrace
	certRetired
)

type pinEntry struct {
	agentID    string
	state      certState
	graceUntil time.Time
}

type agentEntry struct {
	revoked  bool
	spiffeID string
	caps     []string
	groups   []string
}

// Open loads the pin view from db.
func Open(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Registry{cfg: cfg}
	if err := r.reload(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Registry) reload(ctx context.Context) error {
	agents := map[string]agentEntry{}
	rows, err := r.cfg.DB.QueryContext(ctx, `SELECT agent_id, status, spiffe_id, capabilities, groups_json FROM agents`)
	if err != nil {
		return fmt.Errorf("loading agents: %w", err)
	}
	for rows.Next() {
		var id, status, spiffe, caps, groups string
		if err := rows.Scan(&id, &status, &spiffe, &caps, &groups); err != nil {
			rows.Close()
			return err
		}
		e := agentEntry{revoked: status == statusRevoked, spiffeID: spiffe}
		json.Unmarshal([]byte(caps), &e.caps)
		json.Unmarshal([]byte(groups), &e.groups)
		agents[id] = e
	}
	rows.Close()
	pins := map[[32]byte]pinEntry{}
	rows, err = r.cfg.DB.QueryContext(ctx, `SELECT cert_sha256, agent_id, status, COALESCE(grace_until, '') FROM agent_certs`)
	if err != nil {
		return fmt.Errorf("loading certificate pins: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sum, id, status, grace string
		if err := rows.Scan(&sum, &id, &status, &grace); err != nil {
			return err
		}
		key, err := parsePin(sum)
		if err != nil {
			return fmt.Errorf("certificate pin %q: %w", sum, err)
		}
		e := pinEntry{agentID: id, state: certRetired}
		switch status {
		case "active":
			e.state = certActive
		case "grace":
			e.state = certGrace
			e.graceUntil, _ = time.Parse(store.TimeFormat, grace)
		}
		pins[key] = e
	}
	if err := rows.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	r.pins, r.agents = pins, agents
	r.mu.Unlock()
	return nil
}

// Identity is who a pinned client certificate belongs to.
type Identity struct {
	AgentID      string
	SPIFFEID     string
	Capabilities []string
	Groups       []string
	// InGrace is true for a rotated-out certificate still inside the grace
	// period an administrator granted.
	InGrace bool
}

// Denial codes of Check, stable for clients.
const (
	DenyNotPinned = "client_cert_pin_mismatch"
	DenyRevoked   = "agent_revoked"
	DenyRotated   = "client_cert_pin_mismatch"
)

// CheckError explains why a certificate is not accepted.
type CheckError struct {
	Code    string
	Message string
	AgentID string // set when the certificate is known
}

func (e *CheckError) Error() string { return e.Code + ": " + e.Message }

// Check looks up the certificate whose DER hashes to sum. It costs one
// map lookup under a read lock and is what the TLS verifier and every
// request that relies on a client certificate call.
func (r *Registry) Check(sum [32]byte) (Identity, *CheckError) {
	r.mu.RLock()
	p, ok := r.pins[sum]
	a := r.agents[p.agentID]
	r.mu.RUnlock()
	if !ok {
		return Identity{}, &CheckError{Code: DenyNotPinned, Message: "Certificate is not registered to any agent"}
	}
	if a.revoked {
		return Identity{}, &CheckError{Code: DenyRevoked, Message: "Certificate has been revoked", AgentID: p.agentID}
	}
	switch p.state {
	case certActive:
		return Identity{AgentID: p.agentID, SPIFFEID: a.spiffeID, Capabilities: a.caps, Groups: a.groups}, nil
	case certGrace:
		if r.cfg.Now().Before(p.graceUntil) {
			return Identity{AgentID: p.agentID, SPIFFEID: a.spiffeID, Capabilities: a.caps, Groups: a.groups, InGrace: true}, nil
		}
	}
	return Identity{}, &CheckError{Code: DenyRotated, Message: "Certificate has been replaced by a newer one for this agent", AgentID: p.agentID}
}

// Lookup returns the identity of an active agent by id, from memory. It is
// what token-authenticated requests use to refuse revoked agents at once.
func (r *Registry) Lookup(agentID string) (Identity, bool) {
	r.mu.RLock()
	a, ok := r.agents[agentID]
	r.mu.RUnlock()
	if !ok || a.revoked {
		return Identity{}, false
	}
	return Identity{AgentID: agentID, SPIFFEID: a.spiffeID, Capabilities: a.caps, Groups: a.groups}, true
}

// CheckDER hashes der and calls Check.
func (r *Registry) CheckDER(der []byte) (Identity, *CheckError) { return r.Check(sha256.Sum256(der)) }

// withTx runs fn in a write transaction, then the BeforeCommit check, then
// commits; after a successful commit it runs after (in-memory updates).
func (r *Registry) withTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := r.cfg.DB.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("registry: begin: %w", err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if r.cfg.BeforeCommit != nil {
		if err := r.cfg.BeforeCommit(); err != nil {
			return fmt.Errorf("registry: not committing: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("registry: commit: %w", err)
	}
	return nil
}

func (r *Registry) now() time.Time { return r.cfg.Now().UTC() }

// Name rules for capabilities and groups.
var labelPattern = regexp.MustCompile(`^[a-zA-Z0-9._:/*-]{1,128}$`)

func checkLabels(field string, labels []string) ([]string, error) {
	if len(labels) > 64 {
		return nil, fieldError(field, "at most 64 entries")
	}
	seen := map[string]bool{}
	out := []string{}
	for _, l := range labels {
		if !labelPattern.MatchString(l) {
			return nil, fieldError(field, "%q: want 1-128 characters of a-z, A-Z, 0-9 and . _ : / * -", l)
		}
		if !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return out, nil
}

func parsePin(s string) ([32]byte, error) {
	var out [32]byte
	if len(s) != 64 {
		return out, errors.New("want 64 hex digits")
	}
	for i := 0; i < 32; i++ {
		var b byte
		for j := 0; j < 2; j++ {
			c := s[2*i+j]
			switch {
			case c >= '0' && c <= '9':
				b = b<<4 | (c - '0')
			case c >= 'a' && c <= 'f':
				b = b<<4 | (c - 'a' + 10)
			default:
				return out, errors.New("want lower-case hex")
			}
		}
		out[i] = b
	}
	return out, nil
}
