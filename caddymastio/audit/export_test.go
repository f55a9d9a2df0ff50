package audit

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
