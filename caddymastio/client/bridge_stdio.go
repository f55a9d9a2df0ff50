package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// ServeStdio relays an MCP client speaking the stdio transport (one
// JSON-RPC message a line on in, answers a line on out, as desktop MCP
// clients launch servers) to the Target over Streamable HTTP. It keeps
// the session the Mastio's answer to initialize opens, listens on the
// session's GET stream for what the server sends unasked (resuming it
// with Last-Event-ID), and ends the session when in ends.
func (b *Bridge) ServeStdio(ctx context.Context, in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	streamCtx, stopStream := context.WithCancel(ctx)
	s := &stdioSession{b: b, out: out, ctx: ctx, streamCtx: streamCtx}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), maxMessageBytes)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		s.handle(append([]byte(nil), line...))
	}
	s.requests.Wait() // the client may still wait for answers
	stopStream()
	s.stream.Wait()
	s.close()
	return sc.Err()
}

type stdioSession struct {
	b         *Bridge
	ctx       context.Context
	streamCtx context.Context // the GET stream's: cancelled when the client is gone

	outMu sync.Mutex
	out   io.Writer

	mu        sync.Mutex
	sessionID string
	version   string // negotiated protocol version
	initID    string // id of the initialize request, until answered
	listening bool   // the GET stream was started

	requests sync.WaitGroup // POSTs of requests under way
	stream   sync.WaitGroup // the GET stream
}

// emit writes one message to the client.
func (s *stdioSession) emit(msg []byte) {
	var c bytes.Buffer
	if json.Compact(&c, msg) != nil {
		return
	}
	c.WriteByte('\n')
	s.outMu.Lock()
	s.out.Write(c.Bytes())
	s.outMu.Unlock()
}

func (s *stdioSession) headers(m *mcp.Message) http.Header {
	h := http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json, text/event-stream"}}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessionID != "" {
		h.Set("Mcp-Session-Id", s.sessionID)
	}
	if s.version != "" {
		h.Set("Mcp-Protocol-Version", s.version)
	}
	if m != nil && m.Method != "" && s.version >= "2026-07-28" {
		h.Set("Mcp-Method", m.Method)
		if _, name, named, err := mcp.Target(m); named && err == nil {
			h.Set("Mcp-Name", mcp.EncodeHeaderValue(name))
		}
	}
	return h
}

// handle relays one line from the client. Requests go out concurrently
// (a long call does not hold the others); notifications and responses in
// order. After notifications/initialized the GET stream is opened before
// the next message is read, so that a server request a call triggers has
// a stream to arrive on.
func (s *stdioSession) handle(line []byte) {
	msgs, _, perr := mcp.ParseBody(line)
	if perr != nil {
		s.emit(mcp.ErrorResponse(nil, perr))
		return
	}
	m := msgs[0]
	if len(msgs) == 1 && m.IsRequest() {
		if m.Method == "initialize" {
			s.mu.Lock()
			s.initID = string(m.ID)
			s.mu.Unlock()
		}
		s.requests.Add(1)
		go func() {
			defer s.requests.Done()
			s.post(line, m)
		}()
		return
	}
	s.post(line, m)
	if m.Method == "notifications/initialized" {
		s.listen()
	}
}

// post sends one message and relays what answers it.
func (s *stdioSession) post(body []byte, m *mcp.Message) {
	resp, e := s.b.send(s.ctx, http.MethodPost, body, s.headers(m))
	if e != nil {
		for _, a := range answerErrors(body, e) {
			s.emit(a)
		}
		return
	}
	defer resp.Body.Close()
	if sid := resp.Header.Get("Mcp-Session-Id"); sid != "" {
		s.mu.Lock()
		if s.sessionID == "" {
			s.sessionID = sid
		}
		s.mu.Unlock()
	}
	switch {
	case resp.StatusCode == http.StatusAccepted:
	case resp.StatusCode == http.StatusNotFound && s.hasSession():
		for _, a := range answerErrors(body, &mcp.Error{Code: mcp.CodeInvalidRequest, Message: "the MCP session ended (expired or closed by the server): reconnect"}) {
			s.emit(a)
		}
	case isEventStream(resp):
		s.relayEvents(resp.Body, nil)
	default:
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxMessageBytes))
		msgs, _, perr := mcp.ParseBody(data)
		if perr != nil {
			e := &mcp.Error{Code: mcp.CodeUpstream, Message: "the Mastio answered HTTP " + resp.Status + " without a JSON-RPC message"}
			for _, a := range answerErrors(body, e) {
				s.emit(a)
			}
			return
		}
		for _, r := range msgs {
			s.deliver(r)
		}
	}
}

func (s *stdioSession) hasSession() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessionID != ""
}

// deliver passes one message from the server to the client, noting the
// protocol version the answer to initialize negotiates.
func (s *stdioSession) deliver(m *mcp.Message) {
	s.mu.Lock()
	if s.initID != "" && m.IsResponse() && string(m.ID) == s.initID {
		s.initID = ""
		var r struct {
			ProtocolVersion string `json:"protocolVersion"`
		}
		if json.Unmarshal(m.Result, &r) == nil {
			s.version = r.ProtocolVersion
		}
	}
	s.mu.Unlock()
	s.emit(m.Encode())
}

// relayEvents relays the messages of an event stream until it ends;
// lastID, if given, is kept up to date for a resumption.
func (s *stdioSession) relayEvents(body io.Reader, lastID *string) {
	var er mcp.EventReader
	buf := make([]byte, 32<<10)
	for {
		n, err := body.Read(buf)
		if n > 0 {
			events, ferr := er.Feed(buf[:n])
			for _, ev := range events {
				if ev.ID != "" && lastID != nil {
					*lastID = ev.ID
				}
				if len(bytes.TrimSpace(ev.Data)) == 0 {
					continue
				}
				msgs, _, perr := mcp.ParseBody(ev.Data)
				if perr != nil {
					s.b.logf("dropped an event the Mastio sent that is not a JSON-RPC message")
					continue
				}
				for _, m := range msgs {
					s.deliver(m)
				}
			}
			if ferr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// listen opens the session's GET stream (before MCP 2026-07-28, which
// has none) and waits until it is open, or refused, before returning; it
// then keeps it open in the background, resuming it after a break.
func (s *stdioSession) listen() {
	s.mu.Lock()
	if s.listening || s.sessionID == "" || s.version >= "2026-07-28" {
		s.mu.Unlock()
		return
	}
	s.listening = true
	s.mu.Unlock()
	opened := make(chan struct{})
	s.stream.Add(1)
	go func() {
		defer s.stream.Done()
		s.hold(opened)
	}()
	select {
	case <-opened:
	case <-time.After(10 * time.Second):
	}
}

// hold holds the GET stream: opened is closed once the first attempt has
// an answer. A break is resumed with Last-Event-ID, up to five attempts
// in a row without an event.
func (s *stdioSession) hold(opened chan struct{}) {
	var lastID string
	once := sync.Once{}
	signal := func() { once.Do(func() { close(opened) }) }
	defer signal()
	for failures := 0; failures < 5 && s.streamCtx.Err() == nil; {
		h := s.headers(nil)
		h.Set("Accept", "text/event-stream")
		h.Del("Content-Type")
		if lastID != "" {
			h.Set("Last-Event-Id", lastID)
		}
		resp, e := s.b.send(s.streamCtx, http.MethodGet, nil, h)
		signal()
		if e != nil {
			if s.b.finalRefusal() != nil {
				return
			}
			failures++
			s.pause(failures)
			continue
		}
		if resp.StatusCode == http.StatusMethodNotAllowed || resp.StatusCode == http.StatusNotFound || !isEventStream(resp) {
			resp.Body.Close()
			return // no stream here: the server sends nothing unasked
		}
		before := lastID
		s.relayEvents(resp.Body, &lastID)
		resp.Body.Close()
		if lastID == before {
			failures++
		} else {
			failures = 0
		}
		s.pause(failures)
	}
}

func (s *stdioSession) pause(failures int) {
	select {
	case <-s.streamCtx.Done():
	case <-time.After(time.Duration(failures) * 200 * time.Millisecond):
	}
}

// close ends the session at the server.
func (s *stdioSession) close() {
	s.mu.Lock()
	sid := s.sessionID
	s.mu.Unlock()
	if sid == "" || s.b.finalRefusal() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 5*time.Second)
	defer cancel()
	if resp, e := s.b.send(ctx, http.MethodDelete, nil, s.headers(nil)); e == nil {
		resp.Body.Close()
	}
}
