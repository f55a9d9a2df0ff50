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
	"encoding/hex"
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
	// Store holds the registry; every change goes through Audit.Change,
	// with its audit row.
	Store store.Reader
	Audit *audit.Log
	CA    *pki.CA
	// Org is the organisation id, fixed for the data directory.
	Org string
	// Now returns the time; default time.Now.
	Now func() time.Time
	// Shared: other instances change the store too. A certificate this
	// view does not know is then looked up in the store before it is
	// refused: another instance may have issued it a moment ago, before
	// its announcement arrived.
	Shared bool
}

// Issuance is what the certificates issued under the configuration in
// force get (it may change on a reload while the Registry lives on).
type Issuance struct {
	TrustDomain       string
	AgentCertLifetime time.Duration
	EnrollmentTTL     time.Duration
}

// Registry is safe for concurrent use.
type Registry struct {
	cfg Config

	mu     sync.RWMutex
	gen    uint64 // bumped by every change this process makes to the view, so a reload does not undo one
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
	for attempt := 0; ; attempt++ {
		r.mu.RLock()
		gen := r.gen
		r.mu.RUnlock()
		done, err := r.reloadAt(ctx, gen)
		if err != nil || done {
			return err
		}
		if attempt == 10 {
			return fmt.Errorf("loading agents: changed under every reload")
		}
	}
}

// reloadAt reads the view from the store and installs it, unless this
// process changed the view since gen (that change may be missing from the
// read: read again).
func (r *Registry) reloadAt(ctx context.Context, gen uint64) (bool, error) {
	list, err := r.cfg.Store.Agents(ctx, store.AgentFilter{})
	if err != nil {
		return false, fmt.Errorf("loading agents: %w", err)
	}
	agents := map[string]agentEntry{}
	pins := map[[32]byte]pinEntry{}
	for _, a := range list {
		agents[a.AgentID] = agentEntry{revoked: a.Status == store.AgentRevoked, spiffeID: a.SPIFFEID, caps: a.Capabilities,
			groups: a.Groups}
		for _, c := range a.Certificates {
			key, err := parsePin(c.SHA256)
			if err != nil {
				return false, fmt.Errorf("certificate pin %q: %w", c.SHA256, err)
			}
			pins[key] = pinFor(c)
		}
	}
	r.mu.Lock()
	if r.gen != gen {
		r.mu.Unlock()
		return false, nil
	}
	oldPins, oldAgents := r.pins, r.agents
	r.pins, r.agents = pins, agents
	r.mu.Unlock()
	// Whoever's credentials changed behind this process's back (another
	// instance revoked or rotated them) is told, as a local change is.
	touched := map[string]bool{}
	for id, a := range oldAgents {
		if b, ok := agents[id]; !ok || a.revoked != b.revoked {
			touched[id] = true
		}
	}
	for key, p := range oldPins {
		if q, ok := pins[key]; !ok || p != q {
			touched[p.agentID] = true
		}
	}
	for id := range touched {
		r.changed(id)
	}
	return true, nil
}

// Reload reads the pin view again from the store: another process sharing
// it changed agents or certificates. Agents whose credentials changed are
// told to the OnChange watchers, so their requests in flight end.
func (r *Registry) Reload(ctx context.Context) error { return r.reload(ctx) }

// pinFor is the in-memory view of a stored certificate.
func pinFor(c *store.Cert) pinEntry {
	e := pinEntry{agentID: c.AgentID, state: certRetired}
	switch c.Status {
	case store.CertActive:
		e.state = certActive
	case store.CertGrace:
		e.state = certGrace
		if c.GraceUntil != nil {
			e.graceUntil = *c.GraceUntil
		}
	}
	return e
}

// Identity is an agent as the Mastio knows it when it decides: who a
// pinned client certificate or an access token belongs to, and what it may
// do. It is the one identity type: authentication yields it, policy
// decides on it.
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
	if !ok && r.cfg.Shared {
		// Another instance may have registered it a moment ago.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if r.refreshAgent(ctx, agentID) {
			r.mu.RLock()
			a, ok = r.agents[agentID]
			r.mu.RUnlock()
		}
		cancel()
	}
	if !ok || a.revoked {
		return Identity{}, false
	}
	return Identity{AgentID: agentID, SPIFFEID: a.spiffeID, Capabilities: a.caps, Groups: a.groups}, true
}

// CheckDER hashes der and calls Check; in a shared registry, a
// certificate it does not know is read from the store first.
func (r *Registry) CheckDER(der []byte) (Identity, *CheckError) {
	sum := sha256.Sum256(der)
	id, cerr := r.Check(sum)
	if cerr != nil && cerr.Code == DenyNotPinned && cerr.AgentID == "" && r.cfg.Shared && r.refreshPin(sum) {
		return r.Check(sum)
	}
	return id, cerr
}

// refreshPin reads the agent holding the certificate sum from the store
// into the view (see refreshAgent). It reports whether it found one.
func (r *Registry) refreshPin(sum [32]byte) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	certs, err := r.cfg.Store.Certs(ctx, store.CertFilter{SHA256: hex.EncodeToString(sum[:])})
	if err != nil || len(certs) == 0 {
		return false
	}
	return r.refreshAgent(ctx, certs[0].AgentID)
}

// refreshAgent reads one agent from the store into the view, unless this
// process changed the view meanwhile (then the next announcement or resync
// brings it). It reports whether it found the agent.
func (r *Registry) refreshAgent(ctx context.Context, id string) bool {
	r.mu.RLock()
	gen := r.gen
	r.mu.RUnlock()
	list, err := r.cfg.Store.Agents(ctx, store.AgentFilter{ID: id})
	if err != nil || len(list) != 1 {
		return false
	}
	a := list[0]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen != gen {
		return false
	}
	r.agents[a.AgentID] = agentEntry{revoked: a.Status == store.AgentRevoked, spiffeID: a.SPIFFEID, caps: a.Capabilities, groups: a.Groups}
	for _, c := range a.Certificates {
		if key, err := parsePin(c.SHA256); err == nil {
			r.pins[key] = pinFor(c)
		}
	}
	return true
}

// change runs fn as one change of the store with the audit rows it
// records (see audit.Log.Change).
func (r *Registry) change(ctx context.Context, fn func(c *audit.Change) error) error {
	_, err := r.cfg.Audit.Change(ctx, fn)
	return err
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
