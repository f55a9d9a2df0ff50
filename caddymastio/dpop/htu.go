package dpop

import (
	"errors"
	"net"
	"net/url"
	"strings"
)

// NormalizeHTU normalizes an HTTP target URI for comparison as RFC 9449
// §4.3 asks (RFC 3986 §6.2.2 and §6.2.3): lower-case scheme and host, no
// default port, dot segments removed, percent-encodings of unreserved
// characters decoded and the others upper-cased, empty path as "/", no
// query and no fragment. ws/wss are treated as http/https.
func NormalizeHTU(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	scheme := strings.ToLower(u.Scheme)
	switch scheme {
	case "wss":
		scheme = "https"
	case "ws":
		scheme = "http"
	case "http", "https":
	default:
		return "", errors.New("not an http or https URI")
	}
	if u.Host == "" || u.User != nil || u.Opaque != "" {
		return "", errors.New("not an absolute URI with a host")
	}
	host, port := u.Hostname(), u.Port()
	host = strings.ToLower(host)
	if port == "" || scheme == "https" && port == "443" || scheme == "http" && port == "80" {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host = net.JoinHostPort(strings.Trim(host, "[]"), port)
	}
	clean := u.JoinPath()
	return scheme + "://" + host + normalizePercent(clean.EscapedPath()), nil
}

func normalizePercent(p string) string {
	if !strings.Contains(p, "%") {
		if p == "" {
			return "/"
		}
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(v) {
				b.WriteByte(v)
			} else {
				b.WriteByte('%')
				b.WriteString(strings.ToUpper(p[i+1 : i+3]))
			}
			i += 2
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}
