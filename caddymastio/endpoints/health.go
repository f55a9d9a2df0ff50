package endpoints

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

func (h *Handler) readyz(w http.ResponseWriter, r *http.Request) {
	res := h.m.Readiness(r.Context())
	body := struct {
		Status string `json:"status"`
		mastio.Readiness
	}{Status: "ready", Readiness: res}
	status := http.StatusOK
	if !res.Ready() {
		body.Status, status = "not_ready", http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	httpjson.Write(w, status, body)
}

// caCert serves the Org root certificate (PEM) for agents to pin, with a
// strong ETag.
func (h *Handler) caCert(w http.ResponseWriter, r *http.Request) {
	pemBytes := h.m.CA().RootPEM()
	sum := sha256.Sum256(pemBytes)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(pemBytes)
	}
}

// etagMatch implements the weak comparison of If-None-Match (RFC 9110
// §13.1.2).
func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}
