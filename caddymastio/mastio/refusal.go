package mastio

import (
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// Refusal is a refused credential, answered the RFC 6750 / RFC 9449 way:
// a WWW-Authenticate challenge naming the error, and a JSON body with the
// same code.
type Refusal struct {
	Status int
	// Code: invalid_token, invalid_dpop_proof, use_dpop_nonce,
	// insufficient_scope, invalid_client, invalid_request, or a certificate
	// denial; "" when no credentials were sent.
	Code        string
	Description string
	// Reason is the metrics label and log reason (a stable token).
	Reason string
	// NoChallenge leaves out WWW-Authenticate (certificate refusals).
	NoChallenge bool
	// CullisHint, when set, is sent as X-Cullis-Hint, the header the
	// original Mastio's SDK reads (htu_mismatch_check_proxy_public_url).
	CullisHint string
	// AgentID is the agent the refused credentials belong to, when they
	// name one (a valid token, a known certificate): such refusals are
	// audited.
	AgentID string
	// JKT is the thumbprint of the DPoP key the refused request was made
	// with, when it got that far.
	JKT string
}

func quoteParam(s string) string {
	return strings.NewReplacer(`"`, "'", `\`, "/", "\r", " ", "\n", " ").Replace(s)
}

// writeRefusal answers a refusal of Refuse: certificate refusals as a
// problem with a hint, the others as writeOAuthRefusal does.
func (m *Mastio) writeRefusal(w http.ResponseWriter, r *http.Request, ref *Refusal) {
	if ref.NoChallenge {
		httpjson.WriteProblem(w, &httpjson.Problem{Status: ref.Status, Code: ref.Code, Reason: ref.Code, Message: ref.Description,
			Hint: Hint(ref.Code)})
		return
	}
	m.writeOAuthRefusal(w, r, ref)
}

// writeOAuthRefusal sends ref the RFC 6750 / RFC 9449 way, with a
// DPoP-Nonce header when nonces are on.
func (m *Mastio) writeOAuthRefusal(w http.ResponseWriter, r *http.Request, ref *Refusal) {
	h := w.Header()
	if n := m.Nonce(); n != "" {
		h.Set("DPoP-Nonce", n)
	}
	if ref.CullisHint != "" {
		h.Set("X-Cullis-Hint", ref.CullisHint)
	}
	if !ref.NoChallenge {
		params := []string{}
		if ref.Code != "" && ref.Code != "invalid_client" && ref.Code != "invalid_request" {
			params = append(params, `error="`+ref.Code+`"`, `error_description="`+quoteParam(ref.Description)+`"`)
		}
		params = append(params, `algs="`+dpop.AlgsParam+`"`)
		params = append(params, `resource_metadata="`+m.BaseURL(r)+"/.well-known/oauth-protected-resource"+m.RequestPath(r)+`"`)
		h.Set("WWW-Authenticate", "DPoP "+strings.Join(params, ", "))
	}
	code := ref.Code
	if code == "" {
		code = "authentication_required"
	}
	body := map[string]string{"error": code, "error_description": ref.Description, "message": ref.Description}
	if ref.Reason != "" && ref.Reason != code {
		body["reason"] = ref.Reason
	}
	httpjson.Write(w, ref.Status, body)
}

// Hint is what to do about a certificate denial, for answers.
func Hint(code string) string {
	switch code {
	case DenyCertRequired:
		return "present the agent certificate (and key) from enrollment at the TLS handshake; open a new connection after enrolling"
	case registry.DenyRevoked:
		return "this agent was revoked by an administrator; an administrator reactivates it by issuing it new material " +
			"(POST /v1/admin/agents/{id}/rotate-cert, runbook section 6): its old certificates stay dead"
	case registry.DenyNotPinned:
		return "use the most recent certificate issued to this agent"
	case DenyCertUntrusted:
		return "the certificate must chain to this Mastio's Org CA (GET /pki/ca.crt)"
	}
	return ""
}
