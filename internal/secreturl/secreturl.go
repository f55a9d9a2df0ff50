// Package secreturl shows a URL that may carry credentials (a database's,
// a Redis's) without them: for logs, errors and the audit log.
package secreturl

import "net/url"

// Redact is rawURL without its password and query (which may carry one,
// e.g. ?password=); "(unparseable URL)" when it cannot be read, so that a
// malformed URL is never echoed either.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparseable URL)"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	u.RawQuery = ""
	return u.String()
}
