package endpoints

import (
	"net/http"
	"strings"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// TokenRequest is the JSON body of POST /v1/auth/token the original SDK
// sends; an RFC 7523 form is read too.
type TokenRequest struct {
	ClientAssertion string `json:"client_assertion"`
}

// TokenResponse is the answer to POST /v1/auth/token.
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int    `json:"expires_in"`
	Scope       string `json:"scope"`
	IssuedBy    string `json:"issued_by"`
}

// readTokenRequest returns the client assertion of a token request.
func readTokenRequest(w http.ResponseWriter, r *http.Request) (string, *mastio.Refusal) {
	refuse := func(status int, code, desc string) (string, *mastio.Refusal) {
		return "", &mastio.Refusal{Status: status, Code: code, Description: desc, Reason: "invalid_request", NoChallenge: true}
	}
	if strings.HasPrefix(strings.ToLower(r.Header.Get("Content-Type")), "application/x-www-form-urlencoded") {
		r.Body = http.MaxBytesReader(w, r.Body, 32<<10)
		if err := r.ParseForm(); err != nil {
			return refuse(400, "invalid_request", "unreadable form body")
		}
		if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
			return refuse(400, "unsupported_grant_type", "grant_type must be client_credentials")
		}
		if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			return refuse(400, "invalid_request", "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
		}
		return r.PostForm.Get("client_assertion"), nil
	}
	var req TokenRequest
	if p := httpjson.Decode(w, r, 32<<10, false, &req); p != nil {
		return refuse(p.Status, "invalid_request", p.Message)
	}
	return req.ClientAssertion, nil
}

// token mints an access token for a client assertion and a DPoP proof
// (RFC 9449, RFC 7523). Callers without a client certificate are limited
// per address.
func (h *Handler) token(w http.ResponseWriter, r *http.Request) {
	if (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) && h.anonymousLimited(w, r, "token", "token") {
		return
	}
	assertion, ref := readTokenRequest(w, r)
	if ref != nil {
		h.m.RefuseToken(w, r, ref)
		return
	}
	tok, ref, err := h.m.MintToken(r, assertion)
	switch {
	case err != nil:
		h.internalError(w, r, err)
		return
	case ref != nil:
		h.m.RefuseToken(w, r, ref)
		return
	}
	if n := h.m.Nonce(); n != "" {
		w.Header().Set("DPoP-Nonce", n)
	}
	httpjson.Write(w, 200, TokenResponse{AccessToken: tok.AccessToken, TokenType: tok.Type, ExpiresIn: int(tok.ExpiresIn.Seconds()),
		Scope: tok.Scope, IssuedBy: h.m.Issuer()})
}

// withAgent serves a route only an agent with a client certificate pinned
// to it may call; the certificate is checked on every request.
func (h *Handler) withAgent(serve func(http.ResponseWriter, *http.Request, registry.Identity)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, cerr := h.m.AgentFromTLS(r)
		if cerr != nil {
			h.m.Refuse(w, r, mastio.CertificateRefusal(cerr))
			return
		}
		serve(w, r, id)
	}
}

// LoginChallengeResponse is the answer to POST /v1/auth/login-challenge.
type LoginChallengeResponse struct {
	Nonce     string `json:"nonce"`
	ExpiresIn int    `json:"expires_in"`
	AgentID   string `json:"agent_id"`
}

func (h *Handler) loginChallenge(w http.ResponseWriter, r *http.Request, id registry.Identity) {
	httpjson.Write(w, 200, LoginChallengeResponse{Nonce: h.m.NewChallenge(id.AgentID), ExpiresIn: int(mastio.ChallengeTTL.Seconds()),
		AgentID: id.AgentID})
}

// ChallengedAssertionRequest is the body of POST
// /v1/auth/sign-challenged-assertion: an assertion the agent signed over a
// login challenge.
type ChallengedAssertionRequest struct {
	ClientAssertion string `json:"client_assertion"`
	Nonce           string `json:"nonce"`
}

func (h *Handler) signChallengedAssertion(w http.ResponseWriter, r *http.Request, id registry.Identity) {
	var req ChallengedAssertionRequest
	if p := httpjson.Decode(w, r, 32<<10, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return
	}
	ref, err := h.m.CheckChallengedAssertion(r.Context(), r, id.AgentID, req.ClientAssertion, req.Nonce)
	switch {
	case err != nil:
		h.internalError(w, r, err)
	case ref != nil:
		httpjson.WriteProblem(w, &httpjson.Problem{Status: ref.Status, Code: ref.Code, Message: ref.Description, Reason: ref.Reason})
	default:
		httpjson.Write(w, 200, map[string]any{"client_assertion": req.ClientAssertion, "agent_id": id.AgentID, "mastio_signature": nil})
	}
}

// signAssertion is the original Mastio's server-held-key login; this one
// holds no agent keys.
func (h *Handler) signAssertion(w http.ResponseWriter, r *http.Request, id registry.Identity) {
	httpjson.Error(w, http.StatusConflict, "no_server_held_key",
		"this Mastio holds no private key for "+id.AgentID+": sign the assertion with the agent key (login-challenge, then sign-challenged-assertion)")
}
