package registry

import "fmt"

// Error is a refusal with an HTTP status, a stable code and a message fit
// for the caller. Field names the offending request field, if any.
type Error struct {
	Status  int
	Code    string
	Message string
	Field   string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

func fieldError(field, format string, args ...any) *Error {
	return &Error{Status: 400, Code: "invalid_request", Field: field, Message: field + ": " + fmt.Sprintf(format, args...)}
}
