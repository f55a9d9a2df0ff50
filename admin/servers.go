package admin

import (
	"context"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
)

// ServerList is the answer to GET /v1/admin/mcp-servers: every upstream
// of the /v1/mcp aggregator, configured or stored, without secrets.
type ServerList struct {
	Servers []map[string]any `json:"servers"`
	Count   int              `json:"count"`
}

// ListServers lists the MCP servers.
func (a *API) ListServers(ctx context.Context) (*ServerList, error) {
	list, err := a.m.ListServers(ctx)
	if err != nil {
		return nil, err
	}
	return &ServerList{Servers: list, Count: len(list)}, nil
}

// PutServerRequest is the body of POST /v1/admin/mcp-servers.
type PutServerRequest struct {
	Name    string            `json:"name"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
	// BearerToken is stored in the key store (0600), never in the
	// database, and sent as Authorization: Bearer.
	BearerToken      string `json:"bearer_token"`
	Prefix           string `json:"prefix"`
	TimeoutSeconds   int64  `json:"timeout_seconds"`
	MaxArgumentBytes int64  `json:"max_argument_bytes"`
	AgentRate        int    `json:"agent_rate"`
	ItemRate         int    `json:"item_rate"`
	// OAuth: the client credentials the Mastio gets the server's tokens
	// with; a client_secret given here is stored in the key store (0600),
	// never in the database.
	OAuth *mastio.OAuthClient `json:"oauth"`
	// ClientCertificate: present the Mastio's workload certificate (mTLS
	// to the server).
	ClientCertificate bool `json:"client_certificate"`
}

// PutServer registers (or replaces) an MCP server; the answer is the
// server as ListServers shows it.
func (a *API) PutServer(ctx context.Context, c Caller, req PutServerRequest) (map[string]any, error) {
	s := &mastio.Server{URL: req.URL, Headers: req.Headers, Prefix: req.Prefix,
		Timeout: mastio.Duration(time.Duration(req.TimeoutSeconds) * time.Second), MaxArgumentBytes: req.MaxArgumentBytes,
		AgentRate: req.AgentRate, ItemRate: req.ItemRate, OAuth: req.OAuth, ClientCertificate: req.ClientCertificate}
	if err := a.m.PutServer(ctx, req.Name, s, req.BearerToken, c.details()); err != nil {
		return nil, &registry.Error{Status: 400, Code: "invalid_request", Message: err.Error()}
	}
	list, err := a.m.ListServers(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range list {
		if s["name"] == req.Name {
			return s, nil
		}
	}
	return map[string]any{"name": req.Name}, nil
}

// ServerRemoved is the answer to DELETE /v1/admin/mcp-servers/{name}.
type ServerRemoved struct {
	Name    string `json:"name"`
	Removed bool   `json:"removed"`
}

// DeleteServer unregisters a server registered through the admin API.
func (a *API) DeleteServer(ctx context.Context, c Caller, name string) (*ServerRemoved, error) {
	found, err := a.m.DeleteServer(ctx, name, c.details())
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &registry.Error{Status: 404, Code: "server_not_found", Message: "no MCP server " + name + " registered through the admin API"}
	}
	return &ServerRemoved{Name: name, Removed: true}, nil
}
