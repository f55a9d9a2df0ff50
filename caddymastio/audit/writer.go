package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit log is closed")

// Options tune a Log.
type Options struct {
	// MaxBatch is the most rows one transaction commits. Default 512.
	MaxBatch int
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// LazyDelay bounds how long a row queued with QueueLazily waits for a
	// commit to ride with before one starts for it. Default 10ms.
	LazyDelay time.Duration
	// Sync is how far a commit goes before Append returns: SyncFull (the
	// default) or SyncOS.
	Sync Sync
	// Observe, if set, is told of every commit once it is done (for
	// metrics): the rows it committed and how long it took, or its error.
	// It runs on the committing goroutine: it must be quick.
	Observe func(Commit)
}

// Commit is one commit of audit rows, for Options.Observe.
type Commit struct {
	Records  []Record // nil when Err is set
	Duration time.Duration
	Err      error
}

func (l *Log) observe(start time.Time, recs []Record, err error) {
	if l.opts.Observe != nil {
		l.opts.Observe(Commit{Records: recs, Duration: time.Since(start), Err: err})
	}
}

// Sync says how durable a committed row is when Append returns.
type Sync = store.Durability

const (
	// SyncFull fsyncs every commit: an acknowledged row survives a power
	// loss or a kernel crash.
	SyncFull = store.SyncFull
	// SyncOS hands every commit to the operating system without waiting
	// for the disk: an acknowledged row survives a crash, kill or restart
	// of the process, but a power loss or kernel crash may lose the last
	// commits (never the chain's integrity: the database stays consistent
	// and verifiable).
	SyncOS = store.SyncOS
)

// Log appends to the audit chain of a store.
//
// An Append that finds nobody committing commits its own row at once, in
// its own goroutine, without waking anyone. Rows that arrive meanwhile
// queue up; when that commit is done the Log's committer goroutine commits
// them, and keeps committing whatever queued during the previous batch,
// one transaction and one fsync per batch, until the queue is empty. Rows
// are committed in the order they were queued, and a Change after every
// row queued before it. The committer lives as long as the Log: a
// goroutine started per batch would grow a new stack through SQLite's
// deep calls every time.
type Log struct {
	st     store.Store
	writer store.AuditWriter
	opts   Options

	mu        sync.Mutex
	closed    bool
	leading   bool // a commit is running or due; true whenever queue holds rows not queued lazily
	queue     []*appendReq
	lazyTimer *time.Timer   // commits lazily queued rows nothing else commits (see QueueLazily)
	queued    uint64        // rows ever queued
	answered  uint64        // rows ever answered (committed or failed), in queue order
	committed *sync.Cond    // broadcast after each batch is answered
	sync      atomic.Int32  // Sync, settable
	kick      chan struct{} // wakes the committer; sent to by whoever takes the lead
	done      chan struct{} // closed by Close: the committer ends

	// The chain head as of the writer's last commit, so a commit need not
	// read it back (only the goroutine that leads touches it). Change sets
	// headStale, since it extends the chain behind the writer's back.
	headKnown bool
	head      store.AuditHead
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

// Open returns the audit log of st. Close releases it.
func Open(st store.Store, opts Options) *Log {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 512
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.LazyDelay <= 0 {
		opts.LazyDelay = 10 * time.Millisecond
	}
	l := &Log{st: st, writer: st.AuditWriter(), opts: opts, kick: make(chan struct{}, 1), done: make(chan struct{})}
	l.committed = sync.NewCond(&l.mu)
	l.sync.Store(int32(opts.Sync))
	go l.committer()
	return l
}

// committer drains the queue whenever it is woken, until Close.
func (l *Log) committer() {
	for {
		select {
		case <-l.kick:
			l.drain()
		case <-l.done:
			return
		}
	}
}

// wake asks the committer to drain: the caller has taken the lead. One
// pending kick is enough, since the lead is held until the queue is empty.
func (l *Log) wake() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// SetSync changes Sync for the commits that start from now on.
func (l *Log) SetSync(s Sync) { l.sync.Store(int32(s)) }

// Pending is a row Queue queued.
type Pending struct{ req *appendReq }

// Wait returns the row once it is durable, or why it could not be
// committed (nothing of it is then stored).
func (p *Pending) Wait() (Record, error) {
	r := <-p.req.res
	p.req.res <- r // a second Wait gets the same answer
	return r.rec, r.err
}

// Queue adds ev to the chain and returns at once, before the row is
// committed: a commit starts now if none runs, else the row joins the next
// batch. It lets a caller overlap the commit with other work (the gateway
// queues a call's row while the upstream answers) and wait for it with
// Wait before acting on it; a row nobody waits for is committed all the
// same. It fails, and queues nothing, if ev is invalid or the log is
// closed.
func (l *Log) Queue(ev Event) (*Pending, error) {
	req, lead, err := l.enqueue(context.Background(), ev, false)
	if err != nil {
		return nil, err
	}
	if lead {
		l.wake()
	}
	return &Pending{req: req}, nil
}

// QueueLazily adds ev to the chain without starting a commit for it: it
// rides with the next commit (under load, the one that follows at once),
// or with one started after Options.LazyDelay if none comes. For rows nobody
// waits for, whose loss in a crash the reader can tell (an MCP call's
// outcome row, whose mcp.forward row is durable): it saves a commit, an
// fsync and its syscalls, per call. It fails, and queues nothing, if ev is
// invalid or the log is closed.
func (l *Log) QueueLazily(ev Event) error {
	_, _, err := l.enqueue(context.Background(), ev, true)
	return err
}

// commitLazy starts a commit for lazily queued rows if none runs.
func (l *Log) commitLazy() {
	l.mu.Lock()
	l.lazyTimer = nil
	lead := l.leadLocked()
	l.mu.Unlock()
	if lead {
		l.wake()
	}
}

// leadLocked takes the lead if rows wait and nobody commits them; the
// caller must then commit (drain). Called with mu held.
func (l *Log) leadLocked() bool {
	if l.leading || len(l.queue) == 0 {
		return false
	}
	l.leading = true
	return true
}

// Append adds ev to the chain and returns the stored record once it is
// durable. It fails, and nothing is stored, if ev is invalid or the batch
// cannot be committed.
func (l *Log) Append(ctx context.Context, ev Event) (Record, error) {
	req, lead, err := l.enqueue(ctx, ev, false)
	if err != nil {
		return Record{}, err
	}
	if lead && l.commitQueued() {
		l.wake()
	}
	// Once queued, wait for the outcome even if ctx ends: the caller must
	// learn whether its row is durable.
	r := <-req.res
	return r.rec, r.err
}

// enqueue validates ev and queues it; lead reports that no commit runs,
// so the caller must start one. A lazy row never leads: it arms the timer
// that commits it if no other row does first.
func (l *Log) enqueue(ctx context.Context, ev Event, lazy bool) (req *appendReq, lead bool, err error) {
	ev, details, err := prepare(ev)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return nil, false, err
	}
	req = &appendReq{ev: ev, details: details, res: make(chan appendRes, 1)}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false, ErrClosed
	}
	l.queue = append(l.queue, req)
	l.queued++
	if lazy {
		if !l.leading && l.lazyTimer == nil {
			l.lazyTimer = time.AfterFunc(l.opts.LazyDelay, l.commitLazy)
		}
		return req, false, nil
	}
	lead = !l.leading
	l.leading = true
	return req, lead, nil
}

// drain commits queued batches until the queue is empty.
func (l *Log) drain() {
	for l.commitQueued() {
	}
}

// commitQueued commits the oldest queued rows (at most MaxBatch) and
// answers their callers. It reports whether more rows are queued, in which
// case the caller must go on leading; otherwise it has given up the lead.
func (l *Log) commitQueued() bool {
	l.mu.Lock()
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
	l.answered += uint64(len(batch))
	l.committed.Broadcast()
	if len(l.queue) > 0 {
		return true
	}
	l.leading = false
	return false
}

// Flush waits until every row queued so far is committed (or failed): what
// the caller reads next holds them, and what it commits next follows them
// in the chain.
func (l *Log) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leadLocked() { // lazily queued rows: commit them now
		l.wake()
	}
	for target := l.queued; l.answered < target; {
		l.committed.Wait()
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
	if l.leadLocked() { // lazily queued rows
		l.wake()
	}
	for l.leading {
		l.committed.Wait()
	}
	if l.lazyTimer != nil {
		l.lazyTimer.Stop()
	}
	close(l.done)
	l.mu.Unlock()
	l.writer.Close()
	return nil
}

// commit writes batch in one transaction. It chains from the cached head
// when it can; if that fails (another process appended to the database),
// it tries once more from the head read back.
func (l *Log) commit(batch []*appendReq) (recs []Record, err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil { // never leave the waiters hanging
			l.headKnown = false
			recs, err = nil, fmt.Errorf("audit: commit panicked: %v", p)
		}
		l.observe(start, recs, err)
	}()
	recs, cached, err := l.commitOnce(batch)
	if err != nil && cached {
		// The chain grew behind the cached head (a Change committed after
		// this commit looked at headStale): chain from the head read back.
		recs, _, err = l.commitOnce(batch)
	}
	if err != nil {
		l.headKnown = false
		return nil, err
	}
	last := recs[len(recs)-1]
	l.headKnown, l.head = true, store.AuditHead{Seq: last.Seq, Hash: last.Hash}
	return recs, nil
}

// commitOnce commits batch after the cached head when it is known and no
// Change has run since (cached reports that), else after the head the
// store reads in the transaction.
func (l *Log) commitOnce(batch []*appendReq) (recs []Record, cached bool, err error) {
	var known *store.AuditHead
	if !l.headStale.Swap(false) && l.headKnown {
		known = &l.head
	}
	l.headKnown = false
	err = l.writer.Append(context.Background(), Sync(l.sync.Load()), known, func(h store.AuditHead) ([]store.AuditRow, error) {
		ts, stamp := stampOf(l.opts.Now())
		rows := make([]store.AuditRow, len(batch))
		recs = make([]Record, len(batch))
		for i, r := range batch {
			rows[i], recs[i] = chain(h, ts, stamp, r.ev, r.details)
			h = store.AuditHead{Seq: rows[i].Seq, Hash: rows[i].Hash}
		}
		return rows, nil
	})
	if err != nil {
		return nil, known != nil, err
	}
	return recs, known != nil, nil
}

// A Change is one write transaction of the store with the audit rows that
// record it: both commit, or neither (see Log.Change).
type Change struct {
	store.Tx
	events []Event
}

// Record adds ev to the rows the change commits with.
func (c *Change) Record(ev Event) { c.events = append(c.events, ev) }

// Change runs fn in one write transaction of the store and appends the
// events fn recorded, chained in the same transaction: the change and its
// audit rows commit together or not at all, and the rows are durable once
// Change returns nil. This is the only way the Mastio changes its state.
//
// It first waits for the rows queued before it: a row queued while the
// state allowed it (an MCP call's outcome, queued while its agent was
// valid) never follows, in the chain, the change that ended that state (the
// agent's revocation).
func (l *Log) Change(ctx context.Context, fn func(c *Change) error) ([]Record, error) {
	l.Flush()
	var recs []Record
	start := time.Now()
	err := l.st.Update(ctx, func(tx store.Tx) error {
		c := &Change{Tx: tx}
		if err := fn(c); err != nil {
			return err
		}
		if len(c.events) == 0 {
			return nil
		}
		l.headStale.Store(true)
		for _, ev := range c.events { // other instances sharing the store act on these once committed
			if err := tx.Announce(ctx, ev.Type, ev.Subject); err != nil {
				return err
			}
		}
		h, err := tx.AuditHead(ctx)
		if err != nil {
			return err
		}
		ts, stamp := stampOf(l.opts.Now())
		rows := make([]store.AuditRow, len(c.events))
		recs = make([]Record, len(c.events))
		for i, ev := range c.events {
			ev, details, err := prepare(ev)
			if err != nil {
				return err
			}
			rows[i], recs[i] = chain(h, ts, stamp, ev, details)
			h = store.AuditHead{Seq: rows[i].Seq, Hash: rows[i].Hash}
		}
		return tx.AppendAudit(ctx, rows...)
	})
	if err != nil {
		if recs != nil {
			l.observe(start, nil, err) // the rows failed, not the change before them
		}
		return nil, err
	}
	if recs != nil {
		l.observe(start, recs, nil)
	}
	return recs, nil
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

// stampOf is now as rows store it (ts) and as records give it back
// (stamp, truncated as ts is): one for all the rows of a commit.
func stampOf(now time.Time) (ts string, stamp time.Time) {
	ts = now.UTC().Format(TimeFormat)
	stamp, _ = time.Parse(TimeFormat, ts)
	return ts, stamp
}

// chain makes ev (prepared) the row after head, stamped ts.
func chain(head store.AuditHead, ts string, stamp time.Time, ev Event, details []byte) (store.AuditRow, Record) {
	seq := head.Seq + 1
	h := rowHash(head.Hash, seq, ts, ev.Type, ev.Actor, ev.Subject, ev.Result, details)
	row := store.AuditRow{Seq: seq, Time: ts, Type: ev.Type, Actor: ev.Actor, Subject: ev.Subject, Result: ev.Result,
		Details: details, PrevHash: head.Hash, Hash: h}
	return row, Record{Seq: seq, Time: stamp, Type: ev.Type, Actor: ev.Actor, Subject: ev.Subject, Result: ev.Result,
		Details: details, PrevHash: head.Hash, Hash: h}
}

// Head returns the seq and hash of the newest row (0 and GenesisHash when
// the log is empty).
func (l *Log) Head(ctx context.Context) (int64, []byte, error) {
	h, err := l.st.AuditHead(ctx)
	return h.Seq, h.Hash, err
}
