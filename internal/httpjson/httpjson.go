// Package httpjson writes JSON responses and strictly decodes JSON request
// bodies for the Mastio's HTTP APIs.
package httpjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
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
// Content-Type, so that `curl -d` works): at most maxBytes,
// unknown fields refused, exactly one value. An empty body leaves v
// untouched when allowEmpty is set. Errors are *Problem values naming the
// field where the decoder can tell (400), or request_too_large (413).
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
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeProblem(err)
	}
	if dec.More() {
		return &Problem{Status: 400, Code: "invalid_request", Message: "unexpected data after the JSON object"}
	}
	return nil
}

func decodeProblem(err error) *Problem {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return &Problem{Status: 400, Code: "invalid_request", Message: fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn)}
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return &Problem{Status: 400, Code: "invalid_request", Message: fmt.Sprintf("the body must be a JSON object, not %s", typ.Value)}
		}
		return &Problem{Status: 400, Code: "invalid_request", Field: field,
			Message: fmt.Sprintf("%s: wrong type: got %s, want %s", field, typ.Value, jsonType(typ.Type.String()))}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &Problem{Status: 400, Code: "invalid_request", Field: field, Message: fmt.Sprintf("%s: unknown field", field)}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &Problem{Status: 400, Code: "invalid_request", Message: "malformed JSON: unexpected end of body"}
	}
	return &Problem{Status: 400, Code: "invalid_request", Message: "malformed JSON: " + err.Error()}
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
