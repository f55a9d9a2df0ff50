// Package httpjson writes JSON responses and strictly decodes JSON request
// bodies for the Mastio's HTTP APIs.
package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Write sends v as JSON with status. Responses are not cacheable unless
// the caller set Cache-Control already.
func Write(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if h.Get("Cache-Control") == "" {
		h.Set("Cache-Control", "no-store")
	}
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// SetRetryAfter sets Retry-After to wait, in whole seconds rounded up.
func SetRetryAfter(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
}

// Problem is the error body every Mastio endpoint uses.
type Problem struct {
	Status  int    `json:"-"`
	Code    string `json:"error"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// Reason repeats Code for clients of the original Mastio, which read
	// "reason" from 401 bodies.
	Reason string `json:"reason,omitempty"`
	Hint   string `json:"hint,omitempty"`
}

func (p *Problem) Error() string { return p.Code + ": " + p.Message }

// WriteProblem sends p.
func WriteProblem(w http.ResponseWriter, p *Problem) { Write(w, p.Status, p) }

// Error sends a problem built from its parts.
func Error(w http.ResponseWriter, status int, code, message string) {
	WriteProblem(w, &Problem{Status: status, Code: code, Message: message})
}

// Decode reads a JSON object from r's body into v (whatever the declared
// Content-Type, so that `curl -d` works): at most maxBytes, member names
// matched case-sensitively, unknown members refused, a member given twice
// refused (anywhere in the body), valid UTF-8, exactly one value. An empty
// body leaves v untouched when allowEmpty is set. Errors are *Problem
// values naming the member where there is one (400), or request_too_large
// (413).
func Decode(w http.ResponseWriter, r *http.Request, maxBytes int64, allowEmpty bool, v any) *Problem {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &Problem{Status: 413, Code: "request_too_large", Message: fmt.Sprintf("request body exceeds %d bytes", maxBytes)}
		}
		return &Problem{Status: 400, Code: "invalid_request", Message: "reading request body: " + err.Error()}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return &Problem{Status: 400, Code: "invalid_request", Message: "a JSON object body is required"}
	}
	return DecodeBytes(body, v)
}

// DecodeBytes decodes a JSON object strictly, as Decode does.
func DecodeBytes(body []byte, v any) *Problem {
	if err := jsonv2.Unmarshal(body, v, jsonv2.RejectUnknownMembers(true)); err != nil {
		return decodeProblem(err)
	}
	return nil
}

// member names the JSON member a pointer ends at ("" for the top level),
// as a dotted path (devices.0.name).
func member(p jsontext.Pointer) string {
	return strings.ReplaceAll(strings.TrimPrefix(string(p), "/"), "/", ".")
}

func decodeProblem(err error) *Problem {
	var syn *jsontext.SyntacticError
	var sem *jsonv2.SemanticError
	switch {
	case errors.As(err, &syn) && errors.Is(syn.Err, jsontext.ErrDuplicateName):
		field := member(syn.JSONPointer)
		return &Problem{Status: 400, Code: "invalid_request", Field: field,
			Message: fmt.Sprintf("%s: the member appears more than once", field)}
	case errors.As(err, &syn):
		if errors.Is(syn.Err, io.ErrUnexpectedEOF) {
			return &Problem{Status: 400, Code: "invalid_request", Message: "malformed JSON: unexpected end of body"}
		}
		return &Problem{Status: 400, Code: "invalid_request", Message: fmt.Sprintf("malformed JSON at byte %d: %v", syn.ByteOffset, syn.Err)}
	case errors.As(err, &sem) && errors.Is(sem.Err, jsonv2.ErrUnknownName):
		field := member(sem.JSONPointer)
		return &Problem{Status: 400, Code: "invalid_request", Field: field,
			Message: fmt.Sprintf("%s: unknown field (member names are case-sensitive)", field)}
	case errors.As(err, &sem):
		field := member(sem.JSONPointer)
		got := "invalid value"
		if sem.JSONKind != 0 {
			got = kindName(sem.JSONKind)
		}
		if field == "" {
			return &Problem{Status: 400, Code: "invalid_request", Message: fmt.Sprintf("the body must be a JSON object, not %s", got)}
		}
		want := "a valid value"
		if sem.GoType != nil {
			want = jsonType(sem.GoType.String())
		}
		return &Problem{Status: 400, Code: "invalid_request", Field: field,
			Message: fmt.Sprintf("%s: wrong type: got %s, want %s", field, got, want)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &Problem{Status: 400, Code: "invalid_request", Message: "malformed JSON: unexpected end of body"}
	}
	return &Problem{Status: 400, Code: "invalid_request", Message: "malformed JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
}

func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "string"
	case '0':
		return "number"
	case 't', 'f':
		return "bool"
	case 'n':
		return "null"
	case '{':
		return "object"
	case '[':
		return "array"
	}
	return k.String()
}

func jsonType(goType string) string {
	switch {
	case strings.HasPrefix(goType, "[]"):
		return "array"
	case goType == "string":
		return "string"
	case goType == "bool":
		return "boolean"
	case strings.HasPrefix(goType, "int"), strings.HasPrefix(goType, "uint"), strings.HasPrefix(goType, "float"):
		return "number"
	case strings.HasPrefix(goType, "map"), strings.HasPrefix(goType, "struct"):
		return "object"
	}
	return goType
}

// DatabaseUnavailable answers 503 database_unavailable with Retry-After:
// the database cannot be reached or written, and nothing was changed.
func DatabaseUnavailable(w http.ResponseWriter) {
	SetRetryAfter(w, 5*time.Second)
	Error(w, http.StatusServiceUnavailable, "database_unavailable", "the database is unavailable; nothing was changed: retry later")
}

// KeyStoreUnavailable answers 503 key_store_unavailable: the Org CA's key
// store (a Vault, an HSM) does not answer, so nothing was issued; reason
// is the store's short reason ("Vault is sealed").
func KeyStoreUnavailable(w http.ResponseWriter, reason string) {
	SetRetryAfter(w, 5*time.Second)
	Error(w, http.StatusServiceUnavailable, "key_store_unavailable", "the Org CA's key store is unavailable ("+reason+"); nothing was issued: retry later")
}
