package gateway

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// rateLimited is the error for a use over a rate limit; its data tells the
// client when to try again.
func rateLimited(wait time.Duration, format string, args ...any) error {
	secs := int(math.Ceil(wait.Seconds()))
	e := rpcError(mcp.CodeRateLimited, format, args...).(*jsonrpc.Error)
	e.Data, _ = json.Marshal(map[string]int{"retry_after_seconds": secs})
	return e
}

// limitStatusWriter holds a sessionless JSON answer (the SDK writes it
// whole when the handler is done), so that a request refused only for its
// rate is answered 429 with Retry-After, as the per-server routes answer
// it: HTTP clients and proxies back off on that status. Anything else (an
// event stream: subscriptions/listen) passes as it comes.
type limitStatusWriter struct {
	http.ResponseWriter
	status  int
	through bool
	body    bytes.Buffer
}

func (l *limitStatusWriter) WriteHeader(status int) {
	if l.status != 0 {
		return
	}
	l.status = status
	if status != http.StatusOK || !strings.HasPrefix(l.Header().Get("Content-Type"), "application/json") {
		l.through = true
		l.ResponseWriter.WriteHeader(status)
	}
}

func (l *limitStatusWriter) Write(b []byte) (int, error) {
	if l.status == 0 {
		l.WriteHeader(http.StatusOK)
	}
	if l.through {
		return l.ResponseWriter.Write(b)
	}
	return l.body.Write(b)
}

// Flush passes an event stream on; a JSON answer is held until finish.
func (l *limitStatusWriter) Flush() {
	if l.through {
		http.NewResponseController(l.ResponseWriter).Flush()
	}
}

func (l *limitStatusWriter) Unwrap() http.ResponseWriter { return l.ResponseWriter }

// finish writes the JSON answer held, if any.
func (l *limitStatusWriter) finish() {
	if l.through || l.status == 0 {
		return
	}
	status := l.status
	var answer struct {
		Error *struct {
			Code int64 `json:"code"`
			Data struct {
				RetryAfter int `json:"retry_after_seconds"`
			} `json:"data"`
		} `json:"error"`
	}
	if json.Unmarshal(l.body.Bytes(), &answer) == nil && answer.Error != nil &&
		answer.Error.Code == mcp.CodeRateLimited && answer.Error.Data.RetryAfter > 0 {
		l.Header().Set("Retry-After", strconv.Itoa(answer.Error.Data.RetryAfter))
		status = http.StatusTooManyRequests
	}
	l.Header().Set("Content-Length", strconv.Itoa(l.body.Len()))
	l.ResponseWriter.WriteHeader(status)
	l.ResponseWriter.Write(l.body.Bytes())
}
