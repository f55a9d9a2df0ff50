package audit

// QueueLen is a test hook: the rows queued and not yet taken by a commit.
func (l *Log) QueueLen() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue)
}
