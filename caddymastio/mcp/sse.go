package mcp

import (
	"bytes"
	"fmt"
	"strings"
)

// Event is one server-sent event.
type Event struct {
	ID    string
	Event string
	Retry string
	Data  []byte
	// Comment lines (": ...") are kept so keep-alives pass through.
	Comments []string
}

// Bytes encodes the event (data split over data: lines, ended by a blank
// line).
func (e *Event) Bytes() []byte {
	var b bytes.Buffer
	for _, c := range e.Comments {
		b.WriteString(":" + c + "\n")
	}
	if e.Event != "" {
		b.WriteString("event: " + e.Event + "\n")
	}
	if e.ID != "" {
		b.WriteString("id: " + e.ID + "\n")
	}
	if e.Retry != "" {
		b.WriteString("retry: " + e.Retry + "\n")
	}
	if e.Data != nil {
		for _, line := range strings.Split(string(e.Data), "\n") {
			b.WriteString("data: " + line + "\n")
		}
	}
	b.WriteString("\n")
	return b.Bytes()
}

// DefaultMaxEventBytes bounds one event (its fields and the line being
// read) when an EventReader has no limit of its own.
const DefaultMaxEventBytes = 16 << 20

// EventReader splits a byte stream into events as they complete, by the
// rules of the HTML Standard's event stream parser: lines end with CRLF,
// LF or a lone CR; a leading byte order mark is ignored; a line without a
// colon is a field with an empty value; one space after the colon is
// dropped; an id containing NUL and a retry that is not all digits are
// ignored.
type EventReader struct {
	// Max bounds the bytes one event may take; 0 means
	// DefaultMaxEventBytes. Beyond it Feed fails.
	Max int

	buf     []byte
	cur     Event
	size    int  // bytes of the fields of cur
	seen    bool // cur has a field or comment
	started bool // past a possible byte order mark
	skipLF  bool // the last line ended with CR: a following LF belongs to it
	err     error
}

// Feed adds bytes and returns the events they complete. Once an event
// exceeds the limit every call fails.
func (r *EventReader) Feed(p []byte) ([]Event, error) {
	if r.err != nil {
		return nil, r.err
	}
	limit := r.Max
	if limit <= 0 {
		limit = DefaultMaxEventBytes
	}
	r.buf = append(r.buf, p...)
	if !r.started {
		if len(r.buf) < 3 && bytes.HasPrefix([]byte("\xef\xbb\xbf"), r.buf) {
			return nil, nil
		}
		r.buf = bytes.TrimPrefix(r.buf, []byte("\xef\xbb\xbf"))
		r.started = true
	}
	var out []Event
	for {
		if r.skipLF && len(r.buf) > 0 {
			if r.buf[0] == '\n' {
				r.buf = r.buf[1:]
			}
			r.skipLF = false
		}
		i := bytes.IndexAny(r.buf, "\r\n")
		if i < 0 {
			break
		}
		line := string(r.buf[:i])
		r.skipLF = r.buf[i] == '\r'
		r.buf = r.buf[i+1:]
		if ev, ok := r.line(line); ok {
			out = append(out, ev)
		}
		if r.size > limit {
			break
		}
	}
	if r.size+len(r.buf) > limit {
		r.err = fmt.Errorf("a server-sent event exceeds %d bytes", limit)
		return nil, r.err
	}
	return out, nil
}

// line processes one line; ok reports a completed event.
func (r *EventReader) line(line string) (Event, bool) {
	if line == "" {
		ev, ok := r.cur, r.seen
		r.cur, r.seen, r.size = Event{}, false, 0
		return ev, ok
	}
	r.seen = true
	r.size += len(line) + 1
	if strings.HasPrefix(line, ":") {
		r.cur.Comments = append(r.cur.Comments, line[1:])
		return Event{}, false
	}
	field, value, _ := strings.Cut(line, ":")
	value = strings.TrimPrefix(value, " ")
	switch field {
	case "data":
		if r.cur.Data != nil {
			r.cur.Data = append(r.cur.Data, '\n')
		} else {
			r.cur.Data = []byte{}
		}
		r.cur.Data = append(r.cur.Data, value...)
	case "event":
		r.cur.Event = value
	case "id":
		if !strings.Contains(value, "\x00") {
			r.cur.ID = value
		}
	case "retry":
		if value != "" && strings.Trim(value, "0123456789") == "" {
			r.cur.Retry = value
		}
	}
	return Event{}, false
}

// Pending reports bytes of an incomplete event.
func (r *EventReader) Pending() bool { return len(r.buf) > 0 || r.seen }
