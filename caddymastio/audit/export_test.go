package audit

import "context"

// Test hooks: the queue length and whether a commit waits for expected
// rows.
func (l *Log) QueueLen() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue)
}

func (l *Log) Waiting() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting
}

// ConnSynchronous is PRAGMA synchronous on the writer's connection (1
// NORMAL, 2 FULL), or -1 without one.
func (l *Log) ConnSynchronous() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return -1
	}
	var v int
	if err := l.conn.QueryRowContext(context.Background(), "PRAGMA synchronous").Scan(&v); err != nil {
		return -2
	}
	return v
}
