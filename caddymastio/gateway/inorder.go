package gateway

import (
	"bytes"
	"context"
	"io"
	"sync"
	"time"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// The SDK's client hands what an upstream sends it unasked (notifications,
// requests) to its handlers through a queue, and the answer to a call
// straight to the caller, so the answer can overtake what the upstream
// sent before it. The agent must get the progress and log messages of a
// call before its answer (on the call's own stream, which ends with the
// answer). So each upstream connection counts the messages it receives
// (messageCounter, from the event streams: eventScanner) and those its
// handlers are done with (a receiving middleware), and a call ends only
// when the handlers have caught up with what arrived before its answer.

// messageCounter counts one upstream connection's messages.
type messageCounter struct {
	mu       sync.Mutex
	received int
	handled  int
	caught   chan struct{} // closed (and replaced) on each handled message
}

func newMessageCounter() *messageCounter { return &messageCounter{caught: make(chan struct{})} }

func (c *messageCounter) receivedOne() {
	c.mu.Lock()
	c.received++
	c.mu.Unlock()
}

// middleware counts the messages the client's handlers are done with.
func (c *messageCounter) middleware(next mcpsdk.MethodHandler) mcpsdk.MethodHandler {
	return func(ctx context.Context, method string, req mcpsdk.Request) (mcpsdk.Result, error) {
		defer func() {
			c.mu.Lock()
			c.handled++
			close(c.caught)
			c.caught = make(chan struct{})
			c.mu.Unlock()
		}()
		return next(ctx, method, req)
	}
}

// catchUpTimeout bounds how long a call's end waits for the handlers.
const catchUpTimeout = 2 * time.Second

// catchUp waits until the handlers are done with every message received
// so far (catchUpTimeout at most: a message the scanner counted that no
// handler sees must not hold a call forever).
func (c *messageCounter) catchUp() {
	c.mu.Lock()
	target := c.received
	c.mu.Unlock()
	deadline := time.NewTimer(catchUpTimeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		done, caught := c.handled >= target, c.caught
		c.mu.Unlock()
		if done {
			return
		}
		select {
		case <-caught:
		case <-deadline.C:
			return
		}
	}
}

// maxScannedEvent bounds how much of one event eventScanner keeps to look
// at.
const maxScannedEvent = 64 << 10

// eventScanner passes an upstream's event stream through unchanged,
// counting the events that carry a request or notification (a "method").
type eventScanner struct {
	io.ReadCloser
	counter *messageCounter
	event   []byte // the data of the event so far (up to maxScannedEvent)
	line    []byte // the line so far (up to maxScannedEvent)
}

func (s *eventScanner) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	rest := p[:n]
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		chunk := rest
		if i >= 0 {
			chunk = rest[:i]
		}
		s.line = appendBounded(s.line, chunk)
		if i < 0 {
			break
		}
		line := bytes.TrimSuffix(s.line, []byte("\r"))
		switch {
		case len(line) == 0: // the end of an event
			if bytes.Contains(s.event, []byte(`"method":"`)) {
				s.counter.receivedOne()
			}
			s.event = s.event[:0]
		case bytes.HasPrefix(line, []byte("data:")):
			s.event = appendBounded(s.event, line[5:])
		}
		s.line = s.line[:0]
		rest = rest[i+1:]
	}
	return n, err
}

func appendBounded(b, more []byte) []byte {
	if room := maxScannedEvent - len(b); room < len(more) {
		more = more[:max(room, 0)]
	}
	return append(b, more...)
}
