package caddymastio

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// certRequired reports whether a path belongs to the routes that only an
// agent with a pinned client certificate may call.
func certRequired(path string) bool {
	switch path {
	case "/v1/auth/login-challenge", "/v1/auth/sign-challenged-assertion", "/v1/auth/sign-assertion":
		return true
	}
	return path == "/v1/agents" || strings.HasPrefix(path, "/v1/agents/")
}

func certHex(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// serveAgentRoute serves a certificate-bound route after the gate.
func (h *Handler) serveAgentRoute(w http.ResponseWriter, r *http.Request) error {
	id, ok := h.requireAgent(w, r)
	if !ok {
		return nil
	}
	if strings.HasPrefix(r.URL.Path, "/v1/auth/") {
		return h.serveAuthRoute(w, r, id)
	}
	switch r.URL.Path {
	case "/v1/agents/me":
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			httpjson.Error(w, 405, "method_not_allowed", "use GET")
			return nil
		}
		agent, err := h.app.Registry().GetAgent(r.Context(), id.AgentID)
		if err != nil {
			return h.internalError(w, r, err)
		}
		httpjson.Write(w, 200, map[string]any{
			"agent_id":      agent.AgentID,
			"spiffe_id":     agent.SPIFFEID,
			"display_name":  agent.DisplayName,
			"capabilities":  agent.Capabilities,
			"groups":        agent.Groups,
			"cert_sha256":   certHex(r.TLS.PeerCertificates[0]),
			"cert_in_grace": id.InGrace,
		})
		return nil
	case "/v1/agents/search":
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET")
			httpjson.Error(w, 405, "method_not_allowed", "use GET")
			return nil
		}
		return h.searchAgents(w, r)
	}
	httpjson.Error(w, 404, "not_found", "no route "+r.URL.Path)
	return nil
}

// searchAgents is the agent directory: active agents of this organisation,
// filtered by a substring of id or display name (q) and a capability.
func (h *Handler) searchAgents(w http.ResponseWriter, r *http.Request) error {
	q := strings.ToLower(r.URL.Query().Get("q"))
	capability := r.URL.Query().Get("capability")
	agents, err := h.app.Registry().ListAgents(r.Context(), "active")
	if err != nil {
		return h.internalError(w, r, err)
	}
	type entry struct {
		AgentID      string   `json:"agent_id"`
		DisplayName  string   `json:"display_name"`
		SPIFFEID     string   `json:"spiffe_id"`
		Capabilities []string `json:"capabilities"`
	}
	out := []entry{}
	for _, a := range agents {
		if q != "" && !strings.Contains(strings.ToLower(a.AgentID+" "+a.DisplayName), q) {
			continue
		}
		if capability != "" && !contains(a.Capabilities, capability) {
			continue
		}
		out = append(out, entry{a.AgentID, a.DisplayName, a.SPIFFEID, a.Capabilities})
	}
	httpjson.Write(w, 200, map[string]any{"agents": out, "count": len(out)})
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
