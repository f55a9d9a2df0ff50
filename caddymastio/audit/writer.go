package audit

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit log is closed")

// Options tune a Log.
type Options struct {
	// MaxBatch is the most rows one transaction commits. Default 512.
	MaxBatch int
	// BeforeCommit, if set, runs inside each write transaction just before
	// COMMIT; an error aborts the batch and fails every Append in it. The
	// Mastio uses it to refuse commits into a database file that was deleted
	// or replaced while open.
	BeforeCommit func() error
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// Log appends to the audit_events table of db.
type Log struct {
	db   *sql.DB
	opts Options
	reqs chan *appendReq

	mu     sync.RWMutex
	closed bool
	done   chan struct{}

	// The chain head as of the writer's last commit, so a commit need not
	// read it back. Only the run goroutine touches these; AppendTx sets
	// headStale, since it extends the chain behind the writer's back.
	headKnown bool
	headSeq   int64
	headHash  []byte
	headStale atomic.Bool
}

type appendReq struct {
	ev      Event
	details []byte
	res     chan appendRes
}

type appendRes struct {
	rec Record
	err error
}

// Open starts the writer for db, which must carry the schema of package
// store. Close stops it.
func Open(db *sql.DB, opts Options) *Log {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Log{db: db, opts: opts, reqs: make(chan *appendReq, 4096), done: make(chan struct{})}
	go l.run()
	return l
}

// Append adds ev to the chain and returns the stored record once it is
// durable. It fails, and nothing is stored, if ev is invalid or the batch
// cannot be committed.
func (l *Log) Append(ctx context.Context, ev Event) (Record, error) {
	ev, details, err := prepare(ev)
	if err != nil {
		return Record{}, err
	}
	req := &appendReq{ev: ev, details: details, res: make(chan appendRes, 1)}

	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return Record{}, ErrClosed
	}
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		l.mu.RUnlock()
		return Record{}, ctx.Err()
	}
	l.mu.RUnlock()

	// Once queued, wait for the outcome even if ctx ends: the caller must
	// learn whether its row is durable.
	r := <-req.res
	return r.rec, r.err
}

// Close commits what is queued and stops the writer.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.reqs)
	l.mu.Unlock()
	<-l.done
	return nil
}

func (l *Log) run() {
	defer close(l.done)
	batch := make([]*appendReq, 0, l.opts.MaxBatch)
	for {
		req, ok := <-l.reqs
		if !ok {
			return
		}
		batch = append(batch[:0], req)
	gather:
		for len(batch) < l.opts.MaxBatch {
			select {
			case r, ok := <-l.reqs:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			default:
				break gather
			}
		}
		recs, err := l.commit(batch)
		for i, r := range batch {
			if err != nil {
				r.res <- appendRes{err: err}
			} else {
				r.res <- appendRes{rec: recs[i]}
			}
		}
	}
}

// commit writes batch in one transaction. It chains from the cached head
// when it can; if that fails (another process appended to the database),
// it tries once more from the head read back.
func (l *Log) commit(batch []*appendReq) ([]Record, error) {
	recs, err := l.commitOnce(batch)
	if err != nil && l.headKnown {
		l.headKnown = false
		recs, err = l.commitOnce(batch)
	}
	if err != nil {
		l.headKnown = false
		return nil, err
	}
	last := recs[len(recs)-1]
	l.headKnown, l.headSeq, l.headHash = true, last.Seq, last.Hash
	return recs, nil
}

func (l *Log) commitOnce(batch []*appendReq) ([]Record, error) {
	ctx := context.Background()
	tx, err := l.db.BeginTx(ctx, nil) // BEGIN IMMEDIATE via the store's DSN
	if err != nil {
		return nil, fmt.Errorf("audit: begin: %w", err)
	}
	defer tx.Rollback()

	// The write lock is held from here: an AppendTx that ran before has
	// committed or rolled back, and it marked the cached head stale.
	seq, prev := l.headSeq, l.headHash
	if l.headStale.Swap(false) || !l.headKnown {
		l.headKnown = false
		if seq, prev, err = head(ctx, tx); err != nil {
			return nil, err
		}
	}
	stmt, err := tx.PrepareContext(ctx, insertSQL)
	if err != nil {
		return nil, fmt.Errorf("audit: prepare: %w", err)
	}
	defer stmt.Close()

	ts := l.opts.Now().UTC().Format(TimeFormat)
	recs := make([]Record, len(batch))
	for i, r := range batch {
		if recs[i], err = insertRow(ctx, stmt.ExecContext, seq+1, ts, r.ev, r.details, prev); err != nil {
			return nil, err
		}
		seq, prev = recs[i].Seq, recs[i].Hash
	}
	if l.opts.BeforeCommit != nil {
		if err := l.opts.BeforeCommit(); err != nil {
			return nil, fmt.Errorf("audit: not committing: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("audit: commit: %w", err)
	}
	return recs, nil
}

// AppendTx adds ev to the chain inside tx, a write transaction the caller
// owns (begun with BEGIN IMMEDIATE, as the store's transactions are), so a
// state change and its audit row commit or roll back together. The row is
// durable once the caller commits; the chain head is read inside tx, which
// serializes it with the group-commit writer.
func (l *Log) AppendTx(ctx context.Context, tx *sql.Tx, ev Event) (Record, error) {
	ev, details, err := prepare(ev)
	if err != nil {
		return Record{}, err
	}
	l.headStale.Store(true)
	seq, prev, err := head(ctx, tx)
	if err != nil {
		return Record{}, err
	}
	exec := func(ctx context.Context, args ...any) (sql.Result, error) {
		return tx.ExecContext(ctx, insertSQL, args...)
	}
	return insertRow(ctx, exec, seq+1, l.opts.Now().UTC().Format(TimeFormat), ev, details, prev)
}

// prepare validates ev, defaults its result and canonicalizes its details.
func prepare(ev Event) (Event, []byte, error) {
	if err := ev.validate(); err != nil {
		return ev, nil, err
	}
	if ev.Result == "" {
		ev.Result = ResultOK
	}
	details, err := canonicalDetails(ev.Details)
	return ev, details, err
}

const insertSQL = `INSERT INTO audit_events (seq, time, event_type, actor, subject, result, details, prev_hash, hash)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`

// execFunc runs insertSQL with args (a prepared statement's ExecContext,
// or a transaction's with the query bound).
type execFunc func(ctx context.Context, args ...any) (sql.Result, error)

// insertRow chains ev after prev as row seq, stamped ts.
func insertRow(ctx context.Context, exec execFunc, seq int64, ts string, ev Event, details, prev []byte) (Record, error) {
	h := rowHash(prev, seq, ts, ev.Type, ev.Actor, ev.Subject, ev.Result, details)
	if _, err := exec(ctx, seq, ts, ev.Type, ev.Actor, ev.Subject, ev.Result, string(details), prev, h); err != nil {
		return Record{}, fmt.Errorf("audit: inserting row %d: %w", seq, err)
	}
	stamp, _ := time.Parse(TimeFormat, ts)
	return Record{Seq: seq, Time: stamp, Type: ev.Type, Actor: ev.Actor, Subject: ev.Subject, Result: ev.Result,
		Details: details, PrevHash: prev, Hash: h}, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func head(ctx context.Context, q querier) (int64, []byte, error) {
	var seq int64
	var h []byte
	err := q.QueryRowContext(ctx, `SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&seq, &h)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, bytes.Clone(GenesisHash), nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("audit: reading chain head: %w", err)
	}
	return seq, h, nil
}

// Head returns the seq and hash of the newest row (0 and GenesisHash when
// the log is empty).
func (l *Log) Head(ctx context.Context) (int64, []byte, error) { return head(ctx, l.db) }
