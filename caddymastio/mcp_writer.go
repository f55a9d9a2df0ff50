package caddymastio

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// mcpWriter sits between the upstream handler (reverse_proxy) and the
// client. JSON answers are read whole (up to a limit), processed and then
// written; SSE answers are processed event by event and flushed as they
// come, so progress notifications stream while the final result of a call
// is held only as long as its audit row takes to commit.
type mcpWriter struct {
	w     http.ResponseWriter
	x     *exchange
	limit int64

	status      int
	wroteHeader bool
	mode        int // 0 undecided, 1 JSON, 2 SSE, 3 other
	buf         bytes.Buffer
	tooBig      bool
	events      mcp.EventReader
	err         error
}

const (
	modeJSON = 1 + iota
	modeSSE
	modeOther
)

func (m *mcpWriter) Header() http.Header { return m.w.Header() }

func (m *mcpWriter) WriteHeader(status int) {
	if m.wroteHeader {
		return
	}
	m.wroteHeader, m.status = true, status
	if sid := m.w.Header().Get("Mcp-Session-Id"); sid != "" {
		m.x.g.app.state.bindSession(m.x.g.Server, sid, m.x.p.AgentID)
	}
	ct := strings.ToLower(m.w.Header().Get("Content-Type"))
	switch {
	case strings.HasPrefix(ct, "application/json"),
		// An answer to calls or lists that is not labelled JSON is read as
		// JSON all the same: whatever a lenient client would make of it
		// must have been filtered and audited.
		!strings.HasPrefix(ct, "text/event-stream") && status/100 == 2 && len(m.x.calls)+len(m.x.lists) > 0:
		m.mode = modeJSON // written in finish, once processed
	case strings.HasPrefix(ct, "text/event-stream"):
		m.mode = modeSSE
		m.w.Header().Del("Content-Length")
		m.w.WriteHeader(status)
	default:
		m.mode = modeOther
		m.w.WriteHeader(status)
	}
}

func (m *mcpWriter) Write(p []byte) (int, error) {
	if !m.wroteHeader {
		m.WriteHeader(http.StatusOK)
	}
	switch m.mode {
	case modeJSON:
		if int64(m.buf.Len()+len(p)) > m.limit {
			m.tooBig = true
			return len(p), nil
		}
		m.buf.Write(p)
		return len(p), nil
	case modeSSE:
		for _, ev := range m.events.Feed(p) {
			if ev.Data != nil {
				out, err := m.x.process(ev.Data, m.status)
				if err != nil {
					m.err = err
					return 0, err
				}
				ev.Data = out
			}
			if _, err := m.w.Write(ev.Bytes()); err != nil {
				return 0, err
			}
		}
		return len(p), nil
	}
	return m.w.Write(p)
}

// Flush passes flushes on for streams.
func (m *mcpWriter) Flush() {
	if m.mode == modeSSE || m.mode == modeOther {
		http.NewResponseController(m.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (m *mcpWriter) Unwrap() http.ResponseWriter { return m.w }

// finish writes a buffered JSON answer (or closes a stream) after the
// upstream handler returned.
func (m *mcpWriter) finish() error {
	if m.err != nil {
		return m.err
	}
	x := m.x
	switch m.mode {
	case modeJSON:
		body := m.buf.Bytes()
		if m.tooBig {
			x.finishCalls(m.status)
			body = mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeUpstream,
				Message: "the MCP server's answer exceeds " + strconv.FormatInt(m.limit, 10) + " bytes"})
			m.status = http.StatusBadGateway
		} else {
			var answers []json.RawMessage
			trimmed := bytes.TrimSpace(body)
			if len(trimmed) > 0 && trimmed[0] == '[' {
				json.Unmarshal(trimmed, &answers)
			} else if len(trimmed) > 0 {
				answers = []json.RawMessage{trimmed}
			}
			for i, a := range answers {
				out, err := x.process(a, m.status)
				if err != nil {
					return err
				}
				answers[i] = out
			}
			x.finishCalls(m.status)
			if len(answers) > 0 || len(x.denied) > 0 {
				body = x.joined(answers)
			}
		}
		m.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		m.w.WriteHeader(m.status)
		_, err := m.w.Write(body)
		return err
	case modeSSE:
		x.finishCalls(m.status)
		for _, d := range x.denied {
			ev := mcp.Event{Event: "message", Data: d}
			m.w.Write(ev.Bytes())
		}
		http.NewResponseController(m.w).Flush()
	default:
		x.finishCalls(m.status)
		if !m.wroteHeader {
			m.w.WriteHeader(http.StatusOK)
		}
	}
	return nil
}
