package endpoints

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// MeResponse is the answer to GET /v1/agents/me.
type MeResponse struct {
	AgentID      string   `json:"agent_id"`
	SPIFFEID     string   `json:"spiffe_id"`
	DisplayName  string   `json:"display_name"`
	Capabilities []string `json:"capabilities"`
	Groups       []string `json:"groups"`
	CertSHA256   string   `json:"cert_sha256"`
	CertInGrace  bool     `json:"cert_in_grace"`
}

func (h *Handler) me(w http.ResponseWriter, r *http.Request, id registry.Identity) {
	agent, err := h.m.Registry().GetAgent(r.Context(), id.AgentID)
	if err != nil {
		h.internalError(w, r, err)
		return
	}
	sum := sha256.Sum256(r.TLS.PeerCertificates[0].Raw)
	httpjson.Write(w, 200, MeResponse{AgentID: agent.AgentID, SPIFFEID: agent.SPIFFEID, DisplayName: agent.DisplayName,
		Capabilities: agent.Capabilities, Groups: agent.Groups, CertSHA256: hex.EncodeToString(sum[:]), CertInGrace: id.InGrace})
}

// DirectoryEntry is one agent in GET /v1/agents/search.
type DirectoryEntry struct {
	AgentID      string   `json:"agent_id"`
	DisplayName  string   `json:"display_name"`
	SPIFFEID     string   `json:"spiffe_id"`
	Capabilities []string `json:"capabilities"`
}

// searchAgents is the agent directory: active agents of this organisation,
// filtered by a substring of id or display name (q) and a capability.
func (h *Handler) searchAgents(w http.ResponseWriter, r *http.Request, _ registry.Identity) {
	q := strings.ToLower(r.URL.Query().Get("q"))
	capability := r.URL.Query().Get("capability")
	agents, err := h.m.Registry().ListAgents(r.Context(), "active")
	if err != nil {
		h.internalError(w, r, err)
		return
	}
	out := []DirectoryEntry{}
	for _, a := range agents {
		if q != "" && !strings.Contains(strings.ToLower(a.AgentID+" "+a.DisplayName), q) {
			continue
		}
		if capability != "" && !slices.Contains(a.Capabilities, capability) {
			continue
		}
		out = append(out, DirectoryEntry{a.AgentID, a.DisplayName, a.SPIFFEID, a.Capabilities})
	}
	httpjson.Write(w, 200, map[string]any{"agents": out, "count": len(out)})
}
