package mcp

import (
	"bytes"
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

// EventReader splits a byte stream into events as they complete.
type EventReader struct {
	buf  []byte
	cur  Event
	seen bool
}

// Feed adds bytes and returns the events they complete.
func (r *EventReader) Feed(p []byte) []Event {
	r.buf = append(r.buf, p...)
	var out []Event
	for {
		i := bytes.IndexByte(r.buf, '\n')
		if i < 0 {
			return out
		}
		line := string(bytes.TrimSuffix(r.buf[:i], []byte("\r")))
		r.buf = r.buf[i+1:]
		if line == "" {
			if r.seen {
				out = append(out, r.cur)
			}
			r.cur, r.seen = Event{}, false
			continue
		}
		r.seen = true
		if strings.HasPrefix(line, ":") {
			r.cur.Comments = append(r.cur.Comments, line[1:])
			continue
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
			r.cur.ID = value
		case "retry":
			r.cur.Retry = value
		}
	}
}

// Pending reports bytes of an incomplete event.
func (r *EventReader) Pending() bool { return len(r.buf) > 0 || r.seen }
