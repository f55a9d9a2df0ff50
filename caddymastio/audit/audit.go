// Package audit is the Mastio's append-only, hash-chained audit log.
//
// Every row is
//
//	seq, time, event_type, actor, subject, result, details, prev_hash, hash
//
// where time is RFC 3339 UTC with nanoseconds, details is a JSON object and
//
//	hash = SHA-256(prev_hash ‖ JCS(row))
//
// JCS(row) is the RFC 8785 canonical JSON of the object
// {"seq","time","event_type","actor","subject","result","details"} (the row
// without its hashes) and prev_hash is the previous row's hash, 32 zero bytes
// for seq 1. Changing, removing or reordering any row breaks the chain at
// that row, which Verify reports.
//
// Concurrent Append calls are committed together in one transaction (group
// commit, led by one of the callers) and each returns only after its row is
// durable, so a response that depends on its audit row is never sent
// before the row is on disk. A change of state is committed with its rows
// (Change). The chain head is read inside each write transaction, so even
// a second process on the same database cannot fork it.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jcs"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// GenesisHash is prev_hash of the first row.
var GenesisHash = store.GenesisHash

// Results used in the result column.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultError  = "error"
)

// Event is what a caller appends.
type Event struct {
	// Type is a dotted event name such as "agent.revoked".
	Type string
	// Actor is who acted: "system", "admin", "agent:<agent_id>" ...
	Actor string
	// Subject is what was acted on, e.g. the agent id; may be empty.
	Subject string
	// Result is ok, denied or error. Default: ok.
	Result string
	// Details is any value that marshals to a JSON object; nil means {}.
	Details any
}

// Record is a stored row.
type Record struct {
	Seq      int64           `json:"seq"`
	Time     time.Time       `json:"time"`
	Type     string          `json:"event_type"`
	Actor    string          `json:"actor"`
	Subject  string          `json:"subject"`
	Result   string          `json:"result"`
	Details  json.RawMessage `json:"details"`
	PrevHash []byte          `json:"prev_hash"`
	Hash     []byte          `json:"hash"`
}

// TimeFormat is the stored time format: RFC 3339, UTC, nanoseconds.
const TimeFormat = "2006-01-02T15:04:05.000000000Z"

// canonicalDetails turns the caller's details into canonical JSON text and
// checks that it is an object.
func canonicalDetails(d any) ([]byte, error) {
	if d == nil {
		return []byte("{}"), nil
	}
	var c []byte
	var err error
	switch v := d.(type) {
	case json.RawMessage:
		c, err = jcs.Canonicalize(v)
	case []byte:
		c, err = jcs.Canonicalize(v)
	default:
		c, err = jcs.Marshal(d)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: details: %w", err)
	}
	if len(c) == 0 || c[0] != '{' {
		return nil, errors.New("audit: details must be a JSON object")
	}
	return c, nil
}

func (e Event) validate() error {
	if e.Type == "" || strings.ContainsAny(e.Type, " \t\r\n") {
		return fmt.Errorf("audit: invalid event type %q", e.Type)
	}
	if e.Actor == "" {
		return errors.New("audit: actor is required")
	}
	switch e.Result {
	case "", ResultOK, ResultDenied, ResultError:
	default:
		return fmt.Errorf("audit: invalid result %q", e.Result)
	}
	return nil
}

// rowHash computes SHA-256(prev ‖ JCS(row)). details must already be
// canonical JSON. The row object is written directly in canonical form: its
// keys in RFC 8785 order, strings escaped by jcs, seq as a plain integer.
func rowHash(prev []byte, seq int64, ts, typ, actor, subject, result string, details []byte) []byte {
	var b bytes.Buffer
	b.Grow(160 + len(details) + len(actor) + len(subject) + len(typ))
	b.WriteString(`{"actor":`)
	jcs.AppendString(&b, actor)
	b.WriteString(`,"details":`)
	b.Write(details)
	b.WriteString(`,"event_type":`)
	jcs.AppendString(&b, typ)
	b.WriteString(`,"result":`)
	jcs.AppendString(&b, result)
	b.WriteString(`,"seq":`)
	b.WriteString(strconv.FormatInt(seq, 10))
	b.WriteString(`,"subject":`)
	jcs.AppendString(&b, subject)
	b.WriteString(`,"time":`)
	jcs.AppendString(&b, ts)
	b.WriteByte('}')
	h := sha256.New()
	h.Write(prev)
	h.Write(b.Bytes())
	return h.Sum(nil)
}

// ComputeHash recomputes the hash of r from its fields and r.PrevHash.
func (r Record) ComputeHash() ([]byte, error) {
	details, err := jcs.Canonicalize(r.Details)
	if err != nil {
		return nil, err
	}
	return rowHash(r.PrevHash, r.Seq, r.Time.UTC().Format(TimeFormat), r.Type, r.Actor, r.Subject, r.Result, details), nil
}
