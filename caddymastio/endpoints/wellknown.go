package endpoints

import (
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// jwks serves the token verification keys.
func (h *Handler) jwks(w http.ResponseWriter, r *http.Request) {
	body, etag := h.m.JWKS()
	w.Header().Set("ETag", etag)
	w.Header().Set("Cache-Control", "public, max-age=60, stale-while-revalidate=60")
	if etagMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.WriteHeader(200)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

var tokenAuthAlgs = []string{jwt.ES256, jwt.ES384, jwt.RS256, jwt.PS256, jwt.EdDSA}

// authorizationServer serves RFC 8414 authorization server metadata.
func (h *Handler) authorizationServer(w http.ResponseWriter, r *http.Request) {
	base := h.m.BaseURL(r)
	w.Header().Set("Cache-Control", "public, max-age=300")
	httpjson.Write(w, 200, map[string]any{
		"issuer":                                h.m.Issuer(),
		"token_endpoint":                        base + "/v1/auth/token",
		"jwks_uri":                              base + "/.well-known/jwks.json",
		"grant_types_supported":                 []string{"client_credentials"},
		"response_types_supported":              []string{},
		"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": tokenAuthAlgs,
		"dpop_signing_alg_values_supported":                dpop.Algs,
		"tls_client_certificate_bound_access_tokens":       true,
	})
}

// protectedResource serves RFC 9728 protected resource metadata, for the
// whole Mastio or for the resource at the path after the prefix.
func (h *Handler) protectedResource(w http.ResponseWriter, r *http.Request) {
	base := h.m.BaseURL(r)
	w.Header().Set("Cache-Control", "public, max-age=300")
	resource := base + strings.TrimPrefix(r.URL.Path, "/.well-known/oauth-protected-resource")
	httpjson.Write(w, 200, map[string]any{
		"resource":                                   resource,
		"authorization_servers":                      []string{h.m.Issuer()},
		"jwks_uri":                                   base + "/.well-known/jwks.json",
		"bearer_methods_supported":                   []string{"header"},
		"resource_signing_alg_values_supported":      []string{jwt.ES256},
		"dpop_signing_alg_values_supported":          dpop.Algs,
		"dpop_bound_access_tokens_required":          !h.m.Settings().AllowBearerTokens,
		"tls_client_certificate_bound_access_tokens": true,
		"resource_name":                              "Mastio " + h.m.OrgID(),
	})
}
