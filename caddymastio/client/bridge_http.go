package client

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// NewPath returns a random path for a bridge's local endpoint (/mcp-<24
// random bytes>): a process on this machine that does not know it cannot
// use the agent's credentials through the bridge.
func NewPath() string {
	b := make([]byte, 24)
	rand.Read(b)
	return "/mcp-" + base64.RawURLEncoding.EncodeToString(b)
}

// Handler serves the bridge over Streamable HTTP at path, for a listener
// on the loopback address addr (host:port). A request is relayed only if
// its Host is that address (or localhost at that port) and its Origin, if
// it has one, is too: a web page cannot reach the bridge through DNS
// rebinding.
func (b *Bridge) Handler(addr, path string) http.Handler {
	_, port, _ := net.SplitHostPort(addr)
	hosts := map[string]bool{addr: true, "localhost:" + port: true, "127.0.0.1:" + port: true, "[::1]:" + port: true}
	return &httpBridge{b: b, path: path, hosts: hosts}
}

type httpBridge struct {
	b     *Bridge
	path  string
	hosts map[string]bool
}

func (h *httpBridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.hosts[r.Host] {
		http.Error(w, "this bridge answers only on its loopback address", http.StatusForbidden)
		return
	}
	if o := r.Header.Get("Origin"); o != "" && !h.hosts[strings.TrimPrefix(strings.TrimPrefix(o, "http://"), "https://")] {
		http.Error(w, "cross-origin requests are refused", http.StatusForbidden)
		return
	}
	if r.URL.Path != h.path {
		http.NotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodPost, http.MethodGet, http.MethodDelete:
	default:
		w.Header().Set("Allow", "POST, GET, DELETE")
		http.Error(w, "use POST, GET or DELETE", http.StatusMethodNotAllowed)
		return
	}
	var body []byte
	if r.Method == http.MethodPost {
		var err error
		if body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxMessageBytes)); err != nil {
			http.Error(w, "the message is too large", http.StatusRequestEntityTooLarge)
			return
		}
	}
	resp, e := h.b.send(r.Context(), r.Method, body, r.Header)
	if e != nil {
		writeRefused(w, r.Method, body, e)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Connection", "Keep-Alive", "Transfer-Encoding", "Dpop-Nonce", "Www-Authenticate", "Content-Length":
			continue // the bridge's own hop, and the Mastio's credentials protocol
		}
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			rc.Flush() // streams reach the client as they come
		}
		if err != nil {
			return
		}
	}
}

// writeRefused answers a request the bridge could not relay: JSON-RPC
// errors for the requests of a POST (HTTP 200, so that MCP clients show
// them), an HTTP error otherwise.
func writeRefused(w http.ResponseWriter, method string, body []byte, e *mcp.Error) {
	if method != http.MethodPost {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		w.Write(mcp.ErrorResponse(nil, e))
		return
	}
	answers := answerErrors(body, e)
	if len(answers) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	var out []byte
	if len(answers) == 1 && !strings.HasPrefix(strings.TrimSpace(string(body)), "[") {
		out = answers[0]
	} else {
		out, _ = json.Marshal(answers)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(out)
}
