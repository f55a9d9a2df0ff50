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
	// CommitDelay is how long a commit may wait for rows that callers
	// announced with Expect but have not appended yet, so that one commit
	// (one fsync and a dozen syscalls) serves them all. Only commits made
	// under load wait (those of rows that queued while another commit
	// ran), and only while expected rows are missing: a lone caller is
	// never delayed. 0 never waits.
	CommitDelay time.Duration
	// Sync is how far a commit goes before Append returns: SyncFull (the
	// default) or SyncOS.
	Sync Sync
}

// Sync says how durable a committed row is when Append returns.
type Sync int32

const (
	// SyncFull fsyncs every commit: an acknowledged row survives a power
	// loss or a kernel crash (SQLite synchronous=FULL).
	SyncFull Sync = iota
	// SyncOS hands every commit to the operating system without waiting
	// for the disk: an acknowledged row survives a crash, kill or restart
	// of the process, but a power loss or kernel crash may lose the last
	// commits (never the chain's integrity: the database stays consistent
	// and verifiable). SQLite synchronous=NORMAL, on the audit writer's
	// connection only.
	SyncOS
)

// String returns "full" or "os".
func (s Sync) String() string {
	if s == SyncOS {
		return "os"
	}
	return "full"
}

// Log appends to the audit_events table of db.
//
// An Append that finds nobody committing commits its own row at once, in
// its own goroutine, without waking anyone. Rows that arrive meanwhile
// queue up; when that commit is done a drainer goroutine commits them, and
// keeps committing whatever queued during the previous batch, one
// transaction and one fsync per batch, until the queue is empty.
type Log struct {
	db   *sql.DB
	opts Options

	mu      sync.Mutex
	closed  bool
	leading bool // a commit is running or due; true whenever queue is not empty
	queue   []*appendReq
	idle    *sync.Cond // broadcast when leading turns false

	delay    atomic.Int64  // CommitDelay, settable
	sync     atomic.Int32  // Sync, settable
	connSync Sync          // the synchronous setting of conn (writer state)
	expected int           // rows announced by Expect and not yet appended or cancelled
	waiting  bool          // a commit waits for expected rows
	arrived  chan struct{} // wakes that commit when a row is queued or an expectation cancelled

	// Writer state: only the goroutine that leads touches these. The writer
	// keeps one connection with its INSERT prepared, instead of taking a
	// pooled connection and preparing the statement for every batch.
	conn               *sql.Conn
	stmt               *sql.Stmt // the INSERT
	begin, end, rewind *sql.Stmt // BEGIN IMMEDIATE, COMMIT, ROLLBACK

	// The chain head as of the writer's last commit, so a commit need not
	// read it back. AppendTx sets headStale, since it extends the chain
	// behind the writer's back.
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

// Open returns the writer for db, which must carry the schema of package
// store. Close releases it.
func Open(db *sql.DB, opts Options) *Log {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Log{db: db, opts: opts, arrived: make(chan struct{}, 1)}
	l.idle = sync.NewCond(&l.mu)
	l.delay.Store(int64(opts.CommitDelay))
	l.sync.Store(int32(opts.Sync))
	return l
}

// SetSync changes Sync for the commits that start from now on.
func (l *Log) SetSync(s Sync) { l.sync.Store(int32(s)) }

// SetCommitDelay changes CommitDelay for the commits that start from now
// on (a config reload keeps the Log, which belongs to the database).
func (l *Log) SetCommitDelay(d time.Duration) { l.delay.Store(int64(d)) }

// Expectation is a row a caller announced it will append soon. Settle it
// with Append or Cancel; Cancel after Append does nothing, so callers may
// defer it.
type Expectation struct {
	l       *Log
	settled atomic.Bool
}

// Expect announces a row the caller will append shortly (for instance
// once an upstream answers), so that a commit starting meanwhile may wait
// up to CommitDelay for it instead of committing without it.
func (l *Log) Expect() *Expectation {
	l.mu.Lock()
	l.expected++
	l.mu.Unlock()
	return &Expectation{l: l}
}

// Append appends ev as Log.Append does and settles the expectation (a
// second Append is a plain one).
func (e *Expectation) Append(ctx context.Context, ev Event) (Record, error) {
	return e.l.append(ctx, ev, e.settled.CompareAndSwap(false, true))
}

// Cancel withdraws the expectation if it is not settled yet.
func (e *Expectation) Cancel() {
	if !e.settled.CompareAndSwap(false, true) {
		return
	}
	e.l.mu.Lock()
	e.l.expected--
	e.l.wakeWaiter()
	e.l.mu.Unlock()
}

// wakeWaiter tells a commit waiting for expected rows that one came or
// was withdrawn. Called with mu held.
func (l *Log) wakeWaiter() {
	if l.waiting {
		select {
		case l.arrived <- struct{}{}:
		default:
		}
	}
}

// Append adds ev to the chain and returns the stored record once it is
// durable. It fails, and nothing is stored, if ev is invalid or the batch
// cannot be committed.
func (l *Log) Append(ctx context.Context, ev Event) (Record, error) {
	return l.append(ctx, ev, false)
}

// append queues ev and waits for its commit; settle also withdraws one
// expected row.
func (l *Log) append(ctx context.Context, ev Event, settle bool) (Record, error) {
	ev, details, err := prepare(ev)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		if settle {
			l.mu.Lock()
			l.expected--
			l.wakeWaiter()
			l.mu.Unlock()
		}
		return Record{}, err
	}
	req := &appendReq{ev: ev, details: details, res: make(chan appendRes, 1)}

	l.mu.Lock()
	if settle {
		l.expected--
		l.wakeWaiter()
	}
	if l.closed {
		l.mu.Unlock()
		return Record{}, ErrClosed
	}
	l.queue = append(l.queue, req)
	lead := !l.leading
	l.leading = true
	l.mu.Unlock()

	if lead {
		if l.commitQueued(false) {
			go l.drain()
		}
	}
	// Once queued, wait for the outcome even if ctx ends: the caller must
	// learn whether its row is durable.
	r := <-req.res
	return r.rec, r.err
}

// drain commits queued batches until the queue is empty. It runs only
// while rows keep arriving during commits, that is under load, so it is
// where a commit waits for expected rows: a lone caller is never delayed.
func (l *Log) drain() {
	for l.commitQueued(true) {
	}
}

// commitQueued commits the oldest queued rows (at most MaxBatch), first
// waiting for expected rows if wait is set, and answers their callers. It
// reports whether more rows are queued, in which case the caller must go
// on leading; otherwise it has given up the lead.
func (l *Log) commitQueued(wait bool) bool {
	l.mu.Lock()
	if wait {
		l.awaitExpected()
	}
	batch := l.queue
	if len(batch) > l.opts.MaxBatch {
		batch = batch[:l.opts.MaxBatch:l.opts.MaxBatch]
		l.queue = append([]*appendReq(nil), l.queue[l.opts.MaxBatch:]...)
	} else {
		l.queue = nil
	}
	l.mu.Unlock()

	recs, err := l.commit(batch)
	for i, r := range batch {
		if err != nil {
			r.res <- appendRes{err: err}
		} else {
			r.res <- appendRes{rec: recs[i]}
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.queue) > 0 {
		return true
	}
	l.leading = false
	l.idle.Broadcast()
	return false
}

// awaitExpected waits, at most CommitDelay, for the rows announced with
// Expect to be queued, so that they join the coming batch. Called with mu
// held; it releases mu while waiting.
func (l *Log) awaitExpected() {
	delay := time.Duration(l.delay.Load())
	if delay <= 0 || l.expected <= 0 || len(l.queue) >= l.opts.MaxBatch {
		return
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	for l.expected > 0 && len(l.queue) < l.opts.MaxBatch {
		l.waiting = true
		l.mu.Unlock()
		select {
		case <-l.arrived:
			l.mu.Lock()
		case <-timer.C:
			l.mu.Lock()
			l.waiting = false
			return
		}
	}
	l.waiting = false
	select { // drop a wake-up sent after the last check
	case <-l.arrived:
	default:
	}
}

// Close waits for the rows already queued to be committed, refuses new
// ones and releases the writer's connection.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	for l.leading {
		l.idle.Wait()
	}
	l.mu.Unlock()
	l.dropConn()
	return nil
}

// commit writes batch in one transaction. It chains from the cached head
// when it can; if that fails (another process appended to the database),
// it tries once more from the head read back.
func (l *Log) commit(batch []*appendReq) (recs []Record, err error) {
	defer func() {
		if p := recover(); p != nil { // never leave the waiters hanging
			l.dropConn()
			l.headKnown = false
			recs, err = nil, fmt.Errorf("audit: commit panicked: %v", p)
		}
	}()
	recs, err = l.commitOnce(batch)
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

// connect opens the writer's connection and prepares its statements, if
// that is not done yet.
func (l *Log) connect(ctx context.Context) error {
	if l.conn != nil {
		return nil
	}
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("audit: connecting: %w", err)
	}
	l.conn = conn
	for _, p := range []struct {
		stmt **sql.Stmt
		sql  string
	}{{&l.stmt, insertSQL}, {&l.begin, "BEGIN IMMEDIATE"}, {&l.end, "COMMIT"}, {&l.rewind, "ROLLBACK"}} {
		if *p.stmt, err = conn.PrepareContext(ctx, p.sql); err != nil {
			l.dropConn()
			return fmt.Errorf("audit: preparing %q: %w", p.sql, err)
		}
	}
	return nil
}

// dropConn closes the writer's connection; the next batch opens another.
func (l *Log) dropConn() {
	for _, st := range []*sql.Stmt{l.stmt, l.begin, l.end, l.rewind} {
		if st != nil {
			st.Close()
		}
	}
	if l.conn != nil {
		l.conn.Close()
	}
	l.conn, l.stmt, l.begin, l.end, l.rewind = nil, nil, nil, nil, nil
	l.connSync = SyncFull // a new connection starts with the store's DSN (FULL)
}

func (l *Log) commitOnce(batch []*appendReq) ([]Record, error) {
	ctx := context.Background()
	if err := l.connect(ctx); err != nil {
		return nil, err
	}
	var err error
	if want := Sync(l.sync.Load()); want != l.connSync {
		pragma := "PRAGMA synchronous=FULL"
		if want == SyncOS {
			pragma = "PRAGMA synchronous=NORMAL"
		}
		if _, err = l.conn.ExecContext(ctx, pragma); err != nil {
			l.dropConn()
			return nil, fmt.Errorf("audit: %s: %w", pragma, err)
		}
		l.connSync = want
	}
	if _, err = l.begin.ExecContext(ctx); err != nil {
		l.dropConn()
		return nil, fmt.Errorf("audit: begin: %w", err)
	}
	done := false
	defer func() {
		if !done && l.rewind != nil {
			if _, err := l.rewind.ExecContext(ctx); err != nil {
				l.dropConn() // a connection in an unknown state is not reused
			}
		}
	}()

	// The write lock is held from here: an AppendTx that ran before has
	// committed or rolled back, and it marked the cached head stale.
	seq, prev := l.headSeq, l.headHash
	if l.headStale.Swap(false) || !l.headKnown {
		l.headKnown = false
		if seq, prev, err = head(ctx, l.conn); err != nil {
			return nil, err
		}
	}

	now := l.opts.Now().UTC()
	ts := now.Format(TimeFormat)
	stamp, _ := time.Parse(TimeFormat, ts) // the stored (truncated-to-format) time
	recs := make([]Record, len(batch))
	for i, r := range batch {
		if recs[i], err = insertRow(ctx, l.stmt.ExecContext, seq+1, ts, stamp, r.ev, r.details, prev); err != nil {
			return nil, err
		}
		seq, prev = recs[i].Seq, recs[i].Hash
	}
	if l.opts.BeforeCommit != nil {
		if err := l.opts.BeforeCommit(); err != nil {
			return nil, fmt.Errorf("audit: not committing: %w", err)
		}
	}
	if _, err := l.end.ExecContext(ctx); err != nil {
		return nil, fmt.Errorf("audit: commit: %w", err)
	}
	done = true
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
	ts := l.opts.Now().UTC().Format(TimeFormat)
	stamp, _ := time.Parse(TimeFormat, ts)
	return insertRow(ctx, exec, seq+1, ts, stamp, ev, details, prev)
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

// insertRow chains ev after prev as row seq, stamped ts (stamp parsed).
func insertRow(ctx context.Context, exec execFunc, seq int64, ts string, stamp time.Time, ev Event, details, prev []byte) (Record, error) {
	h := rowHash(prev, seq, ts, ev.Type, ev.Actor, ev.Subject, ev.Result, details)
	if _, err := exec(ctx, seq, ts, ev.Type, ev.Actor, ev.Subject, ev.Result, string(details), prev, h); err != nil {
		return Record{}, fmt.Errorf("audit: inserting row %d: %w", seq, err)
	}
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
