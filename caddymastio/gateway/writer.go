package gateway

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// answerWriter sits between the upstream handler (reverse_proxy) and the
// client. Every answer the agent could read as JSON-RPC goes through the
// exchange: JSON answers (and any 2xx answer not labelled as an event
// stream, since a lenient client would read it as JSON) are read whole,
// up to a limit, then processed and written; SSE answers are processed
// event by event and flushed as they come, so progress notifications
// stream while the final result of a call is held only as long as its
// audit row takes to commit. Other answers (a 404 page, a 405) pass as
// they are.
type answerWriter struct {
	w     http.ResponseWriter
	x     *exchange
	limit int64

	status      int
	wroteHeader bool // the upstream wrote its header
	sent        bool // something went to the client
	mode        int
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

func (m *answerWriter) Header() http.Header { return m.w.Header() }

func (m *answerWriter) WriteHeader(status int) {
	if m.wroteHeader {
		return
	}
	m.wroteHeader, m.status = true, status
	if sid := m.w.Header().Get("Mcp-Session-Id"); sid != "" {
		m.x.g.m.BindSession(m.x.r.Context(), m.x.g.cfg.Server, sid, m.x.p.AgentID)
	}
	h := m.w.Header()
	ct := strings.ToLower(h.Get("Content-Type"))
	encoded := h.Get("Content-Encoding") != "" && !strings.EqualFold(h.Get("Content-Encoding"), "identity")
	switch {
	case strings.HasPrefix(ct, "text/event-stream") && !encoded:
		m.mode = modeSSE
		m.events.Max = int(min(m.limit, int64(mcp.DefaultMaxEventBytes)))
		h.Del("Content-Length")
		m.w.WriteHeader(status)
		m.sent = true
	case strings.HasPrefix(ct, "application/json"), strings.HasPrefix(ct, "text/event-stream"), status/100 == 2:
		m.mode = modeJSON // written in finish, once processed
		if encoded {
			m.tooBig = true // unreadable: refused in finish like an oversized answer
		}
	default:
		m.mode = modeOther
		m.w.WriteHeader(status)
		m.sent = true
	}
}

func (m *answerWriter) Write(p []byte) (int, error) {
	if !m.wroteHeader {
		m.WriteHeader(http.StatusOK)
	}
	switch m.mode {
	case modeJSON:
		if m.tooBig || int64(m.buf.Len()+len(p)) > m.limit {
			m.tooBig = true
			return len(p), nil
		}
		m.buf.Write(p)
		return len(p), nil
	case modeSSE:
		if m.err != nil {
			return 0, m.err
		}
		events, err := m.events.Feed(p)
		if err != nil {
			m.err = err
			m.x.g.log.Warn("MCP event stream ended", zap.String("server", m.x.g.cfg.Server), zap.Error(err))
			return 0, err
		}
		for _, ev := range events {
			// Events without data (a priming event that only carries an id
			// to resume from, a keep-alive) hold no message.
			if len(mcp.TrimSpace(ev.Data)) > 0 {
				out, ok := m.x.deliverBody(ev.Data, m.status)
				switch {
				case !ok || len(out) == 0:
					continue // nothing of it may reach the agent
				case len(out) == 1:
					ev.Data = out[0]
				default:
					ev.Data = joinArray(out)
				}
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
func (m *answerWriter) Flush() {
	if m.mode == modeSSE || m.mode == modeOther {
		http.NewResponseController(m.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (m *answerWriter) Unwrap() http.ResponseWriter { return m.w }

// finish writes a buffered JSON answer (or closes a stream) after the
// upstream handler returned.
func (m *answerWriter) finish() error {
	x := m.x
	switch m.mode {
	case modeJSON:
		m.finishJSON()
	case modeSSE:
		x.finishCalls(m.status, "no_response", "the MCP server sent no response for this call")
		for _, d := range x.denied {
			ev := mcp.Event{Event: "message", Data: d}
			m.w.Write(ev.Bytes())
		}
		http.NewResponseController(m.w).Flush()
	default:
		x.finishCalls(m.status, "no_response", "the MCP server sent no response for this call")
		if !m.wroteHeader {
			m.w.WriteHeader(http.StatusOK)
		}
	}
	return nil
}

func (m *answerWriter) finishJSON() {
	x := m.x
	body := mcp.TrimSpace(m.buf.Bytes())
	status := m.status
	switch {
	case m.tooBig:
		x.finishCalls(m.status, "no_response", "the MCP server's answer was too large or encoded")
		x.g.log.Warn("MCP answer withheld: too large or content-encoded", zap.String("server", x.g.cfg.Server),
			zap.Int64("limit", m.limit), zap.String("content_encoding", m.w.Header().Get("Content-Encoding")))
		m.w.Header().Del("Content-Encoding")
		body = mcp.ErrorResponse(nil, &mcp.Error{Code: mcp.CodeUpstream,
			Message: "the MCP server's answer exceeds " + strconv.FormatInt(m.limit, 10) + " bytes or is not in plain JSON"})
		status = http.StatusBadGateway
	case len(body) == 0:
		x.finishCalls(m.status, "no_response", "the MCP server sent no response for this call")
		if len(x.denied) > 0 {
			body, status = x.joined(nil), http.StatusOK
		}
	default:
		out, ok := x.deliverBody(body, m.status)
		switch {
		case !ok && status/100 != 2:
			// An error page that is not JSON-RPC: passed on as it is.
			x.finishCalls(m.status, "error", "the MCP server answered HTTP "+strconv.Itoa(m.status))
		case !ok:
			x.finishCalls(m.status, "invalid_response", "the MCP server's answer could not be read strictly")
			x.answerUnanswered(m.w, "the MCP server "+x.g.cfg.Server+" sent an answer the gateway cannot read")
			m.sent = true
			return
		default:
			x.finishCalls(m.status, "no_response", "the MCP server sent no response for this call")
			if len(out) == 0 && len(x.denied) == 0 && x.withheld {
				x.withdrawn(m.w, false)
				m.sent = true
				return
			}
			body = x.joined(out)
		}
	}
	m.w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	m.w.WriteHeader(status)
	m.w.Write(body)
	m.sent = true
}
