package caddymastio

import (
	"net/http"
	"strings"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// authError is a refused credential, answered the RFC 6750 / RFC 9449
// way: a WWW-Authenticate challenge naming the error, and a JSON body with
// the same code.
type authError struct {
	Status      int
	Code        string // invalid_token, invalid_dpop_proof, use_dpop_nonce, insufficient_scope, invalid_client, invalid_request; "" when no credentials were sent
	Description string
	// Reason is the metrics label and log reason (a stable token).
	Reason string
	// NoChallenge leaves out WWW-Authenticate (mTLS-only refusals).
	NoChallenge bool
	// CullisHint, when set, is sent as X-Cullis-Hint, the header the
	// original Mastio's SDK reads (htu_mismatch_check_proxy_public_url).
	CullisHint string
	// AgentID is the agent the refused credentials belong to, when they
	// name one (a valid token, a known certificate): such refusals are
	// audited.
	AgentID string
}

func quoteParam(s string) string {
	return strings.NewReplacer(`"`, "'", `\`, "/", "\r", " ", "\n", " ").Replace(s)
}

// writeAuthError sends e, with a DPoP-Nonce header when nonces are on.
func (a *App) writeAuthError(w http.ResponseWriter, r *http.Request, e *authError) {
	h := w.Header()
	if a.nonceMode != dpop.NonceOff {
		h.Set("DPoP-Nonce", a.state.nonces.Current(time.Now()))
	}
	if e.CullisHint != "" {
		h.Set("X-Cullis-Hint", e.CullisHint)
	}
	if !e.NoChallenge {
		params := []string{}
		if e.Code != "" && e.Code != "invalid_client" && e.Code != "invalid_request" {
			params = append(params, `error="`+e.Code+`"`, `error_description="`+quoteParam(e.Description)+`"`)
		}
		params = append(params, `algs="`+dpop.AlgsParam+`"`)
		params = append(params, `resource_metadata="`+a.baseURL(r)+"/.well-known/oauth-protected-resource"+originalPath(r)+`"`)
		h.Set("WWW-Authenticate", "DPoP "+strings.Join(params, ", "))
	}
	code := e.Code
	if code == "" {
		code = "authentication_required"
	}
	body := map[string]string{"error": code, "error_description": e.Description, "message": e.Description}
	if e.Reason != "" && e.Reason != code {
		body["reason"] = e.Reason
	}
	httpjson.Write(w, e.Status, body)
}
