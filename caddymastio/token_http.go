package caddymastio

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// originalPath is the request path as the client sent it, before any
// rewrite or handle_path stripping: what a DPoP htu covers.
func originalPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.EscapedPath()
	}
	return r.URL.EscapedPath()
}

// requestURL is the URL a DPoP proof for r must name: public_url (or the
// request's scheme and host) and the original path.
func (a *App) requestURL(r *http.Request) string {
	return a.baseURL(r) + originalPath(r)
}

// baseURL is where clients reach this Mastio.
func (a *App) baseURL(r *http.Request) string {
	if u := a.PublicURLString(); u != "" {
		return u
	}
	scheme := "https"
	if r.TLS == nil {
		scheme = "http"
	}
	return scheme + "://" + r.Host
}

// proofChecks are the DPoP checks for r (with the access token, if any).
func (a *App) proofChecks(r *http.Request, accessToken string) dpop.Checks {
	return dpop.Checks{Method: r.Method, URL: a.requestURL(r), AccessToken: accessToken, MaxAge: a.iatWindow(), MaxSkew: a.clockSkew(),
		Nonces: a.state.nonces, NonceMode: a.nonceMode, Replay: a.state.replay}
}

func (a *App) proofError(r *http.Request, perr *dpop.Error, logger *zap.Logger) *authError {
	reason, hint := perr.Code, ""
	if strings.HasPrefix(perr.Description, "htu mismatch") {
		reason, hint = "htu_mismatch", "htu_mismatch_check_proxy_public_url"
		// The runbook promises both values in the log.
		logger.Info("dpop htu mismatch", zap.String("expected_htu", a.requestURL(r)), zap.String("detail", perr.Description),
			zap.String("public_url", a.PublicURLString()))
	}
	return &authError{Status: http.StatusUnauthorized, Code: perr.Code, Description: perr.Description, Reason: reason, CullisHint: hint}
}

// tokenRequest is the body of POST /v1/auth/token: the original SDK's JSON
// {client_assertion}, or an RFC 7523 form.
type tokenRequest struct {
	ClientAssertion string `json:"client_assertion"`
}

func (h *Handler) readTokenRequest(w http.ResponseWriter, r *http.Request) (string, *authError) {
	if strings.HasPrefix(strings.ToLower(r.Header.Get("Content-Type")), "application/x-www-form-urlencoded") {
		r.Body = http.MaxBytesReader(w, r.Body, 32<<10)
		if err := r.ParseForm(); err != nil {
			return "", &authError{Status: 400, Code: "invalid_request", Description: "unreadable form body", NoChallenge: true}
		}
		if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
			return "", &authError{Status: 400, Code: "unsupported_grant_type", Description: "grant_type must be client_credentials", NoChallenge: true}
		}
		if r.PostForm.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
			return "", &authError{Status: 400, Code: "invalid_request", Description: "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer", NoChallenge: true}
		}
		return r.PostForm.Get("client_assertion"), nil
	}
	var req tokenRequest
	if p := httpjson.Decode(w, r, 32<<10, false, &req); p != nil {
		return "", &authError{Status: p.Status, Code: "invalid_request", Description: p.Message, NoChallenge: true}
	}
	return req.ClientAssertion, nil
}

// verifyAssertion checks a client assertion and that its certificate is
// pinned to the agent it names.
func (h *Handler) verifyAssertion(r *http.Request, raw string) (*token.Assertion, registry.Identity, *authError) {
	fail := func(desc, reason string) (*token.Assertion, registry.Identity, *authError) {
		return nil, registry.Identity{}, &authError{Status: 401, Code: "invalid_client", Description: desc, Reason: reason, NoChallenge: true}
	}
	if raw == "" {
		return fail("client_assertion is required", "missing_assertion")
	}
	base := h.app.baseURL(r)
	as, err := token.VerifyAssertion(raw, token.AssertionChecks{
		Roots: h.app.CA().RootPool(), Intermediates: h.app.CA().Intermediates(),
		Audiences: []string{token.AssertionAudience, h.app.Issuer(), base, base + "/v1/auth/token"},
		Leeway:    30 * time.Second,
	})
	if errors.Is(err, token.ErrAssertionTooLong) {
		// A malformed request rather than a bad credential, as the
		// original Mastio answers it.
		return nil, registry.Identity{}, &authError{Status: 400, Code: "invalid_request", Description: err.Error(),
			Reason: "assertion_lifetime", NoChallenge: true}
	}
	if err != nil {
		return fail(err.Error(), "invalid_assertion")
	}
	id, cerr := h.app.Registry().CheckDER(as.Leaf.Raw)
	if cerr != nil {
		return fail(cerr.Message, cerr.Code)
	}
	if as.Subject != id.AgentID {
		return fail("the assertion's sub "+as.Subject+" is not the agent its certificate is pinned to", "subject_mismatch")
	}
	return as, id, nil
}

func (h *Handler) serveToken(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		httpjson.Error(w, 405, "method_not_allowed", "use POST")
		return nil
	}
	if (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) && h.anonymousLimited(w, r, "token", "token") {
		return nil
	}
	deny := func(e *authError) error {
		authCounter.WithLabelValues("deny", e.Reason).Inc()
		fields := []zap.Field{zap.String("reason", e.Reason), zap.String("error", e.Description), zap.String("remote_ip", clientIP(r))}
		if e.AgentID != "" {
			// The assertion was valid: the refusal names its agent.
			h.logger.Info("token request refused", append(fields, zap.String("agent_id", e.AgentID))...)
			h.app.auditRefusal(r, "auth.refused", e.AgentID, e.Status, e.Reason, e.Description, nil)
		} else {
			h.app.refusalLog.Info("token request refused", fields...)
		}
		h.app.writeAuthError(w, r, e)
		return nil
	}
	raw, aerr := h.readTokenRequest(w, r)
	if aerr != nil {
		aerr.Reason = "invalid_request"
		return deny(aerr)
	}
	as, id, aerr := h.verifyAssertion(r, raw)
	if aerr != nil {
		return deny(aerr)
	}
	x5t := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		tlsID, cerr := h.app.AgentFromTLS(r)
		if cerr != nil {
			return deny(&authError{Status: 401, Code: "invalid_client", Description: cerr.Message, Reason: cerr.Code, NoChallenge: true,
				AgentID: id.AgentID})
		}
		if tlsID.AgentID != id.AgentID {
			return deny(&authError{Status: 401, Code: "invalid_client", Description: "the TLS client certificate belongs to another agent than the assertion",
				Reason: "cert_agent_mismatch", NoChallenge: true, AgentID: id.AgentID})
		}
		x5t = jwt.CertThumbprint(r.TLS.PeerCertificates[0].Raw)
	}
	jkt := ""
	if vals := r.Header.Values("DPoP"); len(vals) > 0 || !h.app.AllowBearerTokens {
		proof, perr := dpop.Verify(r.Context(), vals, h.app.proofChecks(r, ""))
		if perr != nil {
			e := h.app.proofError(r, perr, h.logger)
			e.AgentID = id.AgentID
			return deny(e)
		}
		jkt = proof.JKT
	}
	now := time.Now()
	claims := token.Claims{Issuer: h.app.Issuer(), Subject: id.AgentID, Audience: h.app.Issuer(),
		Expiry: now.Add(h.app.tokenTTL()).Unix(), IssuedAt: now.Unix(), ClientID: id.AgentID,
		Scope: strings.Join(id.Capabilities, " "), SPIFFEID: id.SPIFFEID}
	if jkt != "" || x5t != "" {
		claims.Cnf = &token.Confirmation{JKT: jkt, X5T: x5t}
	}
	b := make([]byte, 16)
	rand.Read(b)
	claims.ID = base64.RawURLEncoding.EncodeToString(b)
	tok, err := h.app.state.keys.Mint(claims)
	if err != nil {
		return h.internalError(w, r, err)
	}
	// The assertion's jti is used once, recorded in the transaction of the
	// token.issued row: a replay is refused after a restart or crash too.
	replayed := false
	err = h.app.state.withAudit(r.Context(), func(tx *sql.Tx) error {
		fresh, err := store.UseOnce(r.Context(), tx, assertionKey(id.AgentID, as.JTI), as.Expiry.Add(time.Minute))
		if err == nil && !fresh {
			replayed = true
			return errAssertionReplayed
		}
		return err
	}, audit.Event{Type: "token.issued", Actor: "agent:" + id.AgentID, Subject: id.AgentID,
		Details: map[string]any{"jti": claims.ID, "jkt": jkt, "x5t#S256": x5t, "exp": claims.Expiry, "scope": claims.Scope,
			"remote_ip": clientIP(r)}})
	if replayed {
		return deny(&authError{Status: 401, Code: "invalid_client", Description: "this client_assertion was already used (jti)", Reason: "assertion_replay",
			NoChallenge: true, AgentID: id.AgentID})
	}
	if err != nil {
		return h.internalError(w, r, err)
	}
	authCounter.WithLabelValues("success", "token_issued").Inc()
	typ := "DPoP"
	if jkt == "" {
		typ = "Bearer"
		h.logger.Warn("issued an unbound bearer token (allow_bearer_tokens is on)", zap.String("agent_id", id.AgentID))
	}
	if h.app.nonceMode != dpop.NonceOff {
		w.Header().Set("DPoP-Nonce", h.app.state.nonces.Current(now))
	}
	httpjson.Write(w, 200, map[string]any{"access_token": tok, "token_type": typ, "expires_in": int(h.app.tokenTTL().Seconds()),
		"scope": claims.Scope, "issued_by": h.app.Issuer()})
	return nil
}

var errAssertionReplayed = errors.New("client assertion already used")

// assertionKey is the single-use key of an assertion: its agent and jti,
// hashed (a jti is up to 256 characters of the client's choosing).
func assertionKey(agentID, jti string) string {
	sum := sha256.Sum256([]byte("assertion|" + agentID + "|" + jti))
	return "assertion:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// Login challenges are stateless: random, expiry and an HMAC binding them
// to the agent; the replay cache makes each usable once.
const challengeTTL = 120 * time.Second

func (a *App) newChallenge(agentID string, now time.Time) string {
	buf := make([]byte, 16+8, 16+8+16)
	rand.Read(buf[:16])
	binary.BigEndian.PutUint64(buf[16:], uint64(now.Add(challengeTTL).Unix()))
	m := hmac.New(sha256.New, a.state.challengeKey)
	m.Write([]byte("login-challenge|" + agentID + "|"))
	m.Write(buf)
	return base64.RawURLEncoding.EncodeToString(append(buf, m.Sum(nil)[:16]...))
}

func (a *App) checkChallenge(agentID, nonce string, now time.Time) (time.Time, error) {
	raw, err := base64.RawURLEncoding.Strict().DecodeString(nonce)
	if err != nil || len(raw) != 40 {
		return time.Time{}, errors.New("the nonce is not a login challenge of this Mastio")
	}
	m := hmac.New(sha256.New, a.state.challengeKey)
	m.Write([]byte("login-challenge|" + agentID + "|"))
	m.Write(raw[:24])
	if !hmac.Equal(m.Sum(nil)[:16], raw[24:]) {
		return time.Time{}, errors.New("the nonce was not issued to this agent")
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(raw[16:24])), 0)
	if now.After(exp) {
		return time.Time{}, errors.New("the login challenge expired")
	}
	return exp, nil
}

func (h *Handler) serveAuthRoute(w http.ResponseWriter, r *http.Request, id registry.Identity) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		httpjson.Error(w, 405, "method_not_allowed", "use POST")
		return nil
	}
	switch r.URL.Path {
	case "/v1/auth/login-challenge":
		httpjson.Write(w, 200, map[string]any{"nonce": h.app.newChallenge(id.AgentID, time.Now()),
			"expires_in": int(challengeTTL.Seconds()), "agent_id": id.AgentID})
		return nil
	case "/v1/auth/sign-assertion":
		httpjson.Error(w, http.StatusConflict, "no_server_held_key",
			"this Mastio holds no private key for "+id.AgentID+": sign the assertion with the agent key (login-challenge, then sign-challenged-assertion)")
		return nil
	}
	var req struct {
		ClientAssertion string `json:"client_assertion"`
		Nonce           string `json:"nonce"`
	}
	if p := httpjson.Decode(w, r, 32<<10, false, &req); p != nil {
		httpjson.WriteProblem(w, p)
		return nil
	}
	deny := func(desc, reason string) error {
		authCounter.WithLabelValues("deny", reason).Inc()
		h.logger.Info("challenged assertion refused", zap.String("agent_id", id.AgentID), zap.String("reason", reason), zap.String("error", desc))
		httpjson.WriteProblem(w, &httpjson.Problem{Status: 401, Code: "invalid_client", Message: desc, Reason: reason})
		return nil
	}
	now := time.Now()
	exp, err := h.app.checkChallenge(id.AgentID, req.Nonce, now)
	if err != nil {
		return deny(err.Error(), "invalid_challenge")
	}
	as, aid, aerr := h.verifyAssertion(r, req.ClientAssertion)
	if aerr != nil {
		return deny(aerr.Description, aerr.Reason)
	}
	if aid.AgentID != id.AgentID {
		return deny("the assertion is for another agent than the client certificate", "cert_agent_mismatch")
	}
	if as.Nonce != req.Nonce {
		return deny("the assertion's nonce claim does not match the challenge", "nonce_mismatch")
	}
	if fresh, err := h.app.state.replay.Use(r.Context(), "challenge|"+req.Nonce, exp.Add(time.Minute)); err != nil {
		return h.internalError(w, r, err)
	} else if !fresh {
		return deny("this login challenge was already used", "challenge_replay")
	}
	httpjson.Write(w, 200, map[string]any{"client_assertion": req.ClientAssertion, "agent_id": id.AgentID, "mastio_signature": nil})
	return nil
}

// serveJWKS serves the token verification keys.
func (h *Handler) serveJWKS(w http.ResponseWriter, r *http.Request) {
	body, etag := h.app.state.keys.JWKS()
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

// serveMetadata serves RFC 8414 authorization server metadata and RFC
// 9728 protected resource metadata.
func (h *Handler) serveMetadata(w http.ResponseWriter, r *http.Request) {
	base := h.app.baseURL(r)
	w.Header().Set("Cache-Control", "public, max-age=300")
	if r.URL.Path == "/.well-known/oauth-authorization-server" {
		httpjson.Write(w, 200, map[string]any{
			"issuer":                                h.app.Issuer(),
			"token_endpoint":                        base + "/v1/auth/token",
			"jwks_uri":                              base + "/.well-known/jwks.json",
			"grant_types_supported":                 []string{"client_credentials"},
			"response_types_supported":              []string{},
			"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": tokenAuthAlgs,
			"dpop_signing_alg_values_supported":                dpop.Algs,
			"tls_client_certificate_bound_access_tokens":       true,
		})
		return
	}
	resource := base + strings.TrimPrefix(r.URL.Path, "/.well-known/oauth-protected-resource")
	httpjson.Write(w, 200, map[string]any{
		"resource":                                   resource,
		"authorization_servers":                      []string{h.app.Issuer()},
		"jwks_uri":                                   base + "/.well-known/jwks.json",
		"bearer_methods_supported":                   []string{"header"},
		"resource_signing_alg_values_supported":      []string{jwt.ES256},
		"dpop_signing_alg_values_supported":          dpop.Algs,
		"dpop_bound_access_tokens_required":          !h.app.AllowBearerTokens,
		"tls_client_certificate_bound_access_tokens": true,
		"resource_name":                              "Mastio " + h.app.OrgIDValue(),
	})
}
