package mastio

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/dpop"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
)

// IssuedToken is an access token minted for an agent.
type IssuedToken struct {
	AccessToken string
	Type        string // DPoP, or Bearer for an unbound token
	ExpiresIn   time.Duration
	Scope       string
	AgentID     string
}

// VerifyAssertion checks a client assertion and that its certificate is
// pinned to the agent it names.
func (m *Mastio) VerifyAssertion(r *http.Request, raw string) (*token.Assertion, registry.Identity, *Refusal) {
	fail := func(desc, reason string) (*token.Assertion, registry.Identity, *Refusal) {
		return nil, registry.Identity{}, &Refusal{Status: 401, Code: "invalid_client", Description: desc, Reason: reason, NoChallenge: true}
	}
	if raw == "" {
		return fail("client_assertion is required", "missing_assertion")
	}
	base := m.BaseURL(r)
	as, err := token.VerifyAssertion(raw, token.AssertionChecks{
		Roots: m.ca.RootPool(), Intermediates: m.ca.Intermediates(),
		Audiences: []string{token.AssertionAudience, m.issuer, base, base + "/v1/auth/token"},
		Leeway:    30 * time.Second,
	})
	if errors.Is(err, token.ErrAssertionTooLong) {
		// A malformed request rather than a bad credential, as the
		// original Mastio answers it.
		return nil, registry.Identity{}, &Refusal{Status: 400, Code: "invalid_request", Description: err.Error(),
			Reason: "assertion_lifetime", NoChallenge: true}
	}
	if err != nil {
		return fail(err.Error(), "invalid_assertion")
	}
	id, cerr := m.registry.CheckDER(as.Leaf.Raw)
	if cerr != nil {
		return fail(cerr.Message, cerr.Code)
	}
	if as.Subject != id.AgentID {
		return fail("the assertion's sub "+as.Subject+" is not the agent its certificate is pinned to", "subject_mismatch")
	}
	return as, id, nil
}

var errAssertionReplayed = errors.New("client assertion already used")

// assertionKey is the single-use key of an assertion: its agent and jti,
// hashed (a jti is up to 256 characters of the client's choosing).
func assertionKey(agentID, jti string) string {
	sum := sha256.Sum256([]byte("assertion|" + agentID + "|" + jti))
	return "assertion:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// MintToken mints an access token for the client assertion of r: bound to
// the DPoP key of r's proof and, over mTLS, to its client certificate.
// The assertion's jti is used once, recorded in the transaction of the
// token.issued row, so a replay is refused after a restart or crash too.
func (m *Mastio) MintToken(r *http.Request, assertion string) (*IssuedToken, *Refusal, error) {
	as, id, ref := m.VerifyAssertion(r, assertion)
	if ref != nil {
		return nil, ref, nil
	}
	x5t := ""
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		tlsID, cerr := m.AgentFromTLS(r)
		if cerr != nil {
			return nil, &Refusal{Status: 401, Code: "invalid_client", Description: cerr.Message, Reason: cerr.Code, NoChallenge: true,
				AgentID: id.AgentID}, nil
		}
		if tlsID.AgentID != id.AgentID {
			return nil, &Refusal{Status: 401, Code: "invalid_client", Description: "the TLS client certificate belongs to another agent than the assertion",
				Reason: "cert_agent_mismatch", NoChallenge: true, AgentID: id.AgentID}, nil
		}
		x5t = jwt.CertThumbprint(r.TLS.PeerCertificates[0].Raw)
	}
	jkt := ""
	if vals := r.Header.Values("DPoP"); len(vals) > 0 || !m.cfg.AllowBearerTokens {
		proof, perr := dpop.Verify(r.Context(), vals, m.ProofChecks(r, ""))
		if perr != nil {
			ref := m.ProofRefusal(r, perr)
			ref.AgentID = id.AgentID
			return nil, ref, nil
		}
		jkt = proof.JKT
	}
	now := time.Now()
	claims := token.Claims{Issuer: m.issuer, Subject: id.AgentID, Audience: m.issuer,
		Expiry: now.Add(m.cfg.TokenTTL).Unix(), IssuedAt: now.Unix(), ClientID: id.AgentID,
		Scope: strings.Join(id.Capabilities, " "), SPIFFEID: id.SPIFFEID}
	if jkt != "" || x5t != "" {
		claims.Cnf = &token.Confirmation{JKT: jkt, X5T: x5t}
	}
	b := make([]byte, 16)
	rand.Read(b)
	claims.ID = base64.RawURLEncoding.EncodeToString(b)
	tok, err := m.keys.Mint(claims)
	if err != nil {
		return nil, nil, err
	}
	replayed := false
	_, err = m.audit.Change(r.Context(), func(c *audit.Change) error {
		fresh, err := c.UseOnce(r.Context(), assertionKey(id.AgentID, as.JTI), as.Expiry.Add(time.Minute))
		if err == nil && !fresh {
			replayed = true
			return errAssertionReplayed
		}
		c.Record(audit.Event{Type: "token.issued", Actor: "agent:" + id.AgentID, Subject: id.AgentID,
			Details: map[string]any{"jti": claims.ID, "jkt": jkt, "x5t#S256": x5t, "exp": claims.Expiry, "scope": claims.Scope,
				"remote_ip": m.ClientIP(r)}})
		return err
	})
	if replayed {
		return nil, &Refusal{Status: 401, Code: "invalid_client", Description: "this client_assertion was already used (jti)", Reason: "assertion_replay",
			NoChallenge: true, AgentID: id.AgentID}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	authCounter.WithLabelValues("success", "token_issued").Inc()
	m.LogDecision(r, "token issued", Decision{Kind: KindToken, Allow: true, Reason: "issued", AgentID: id.AgentID, JKT: jkt,
		Fields: []zap.Field{zap.String("jti", claims.ID)}})
	typ := "DPoP"
	if jkt == "" {
		typ = "Bearer"
		m.log.Warn("issued an unbound bearer token (allow_bearer_tokens is on)", zap.String("agent_id", id.AgentID))
	}
	return &IssuedToken{AccessToken: tok, Type: typ, ExpiresIn: m.cfg.TokenTTL, Scope: claims.Scope, AgentID: id.AgentID}, nil, nil
}

// RefuseToken counts, logs (or audits, when the refusal names an agent:
// the assertion was valid) and answers a refused token request, in the
// OAuth error format.
func (m *Mastio) RefuseToken(w http.ResponseWriter, r *http.Request, ref *Refusal) {
	m.noteRefusal(r, ref, KindToken, "token request refused")
	m.writeOAuthRefusal(w, r, ref)
}

// Login challenges are stateless: random, expiry and an HMAC binding them
// to the agent (and, through the key, to the replay cache's epoch); the
// replay cache makes each usable once.
const ChallengeTTL = 120 * time.Second

// NewChallenge issues a login challenge for agentID.
func (m *Mastio) NewChallenge(agentID string) string {
	buf := make([]byte, 16+8, 16+8+16)
	rand.Read(buf[:16])
	binary.BigEndian.PutUint64(buf[16:], uint64(time.Now().Add(ChallengeTTL).Unix()))
	mac := hmac.New(sha256.New, *m.challengeKey.Load())
	mac.Write([]byte("login-challenge|" + agentID + "|"))
	mac.Write(buf)
	return base64.RawURLEncoding.EncodeToString(append(buf, mac.Sum(nil)[:16]...))
}

func (m *Mastio) checkChallenge(agentID, nonce string, now time.Time) (time.Time, error) {
	raw, err := jwt.DecodeBase64URL(nonce) // one encoding: the replay check keys on the string
	if err != nil || len(raw) != 40 {
		return time.Time{}, errors.New("the nonce is not a login challenge of this Mastio")
	}
	mac := hmac.New(sha256.New, *m.challengeKey.Load())
	mac.Write([]byte("login-challenge|" + agentID + "|"))
	mac.Write(raw[:24])
	if !hmac.Equal(mac.Sum(nil)[:16], raw[24:]) {
		return time.Time{}, errors.New("the nonce was not issued to this agent")
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(raw[16:24])), 0)
	if now.After(exp) {
		return time.Time{}, errors.New("the login challenge expired")
	}
	return exp, nil
}

// CheckChallengedAssertion checks an assertion signed over a login
// challenge issued to agentID (the agent of the client certificate), and
// uses the challenge up. A refusal (counted, logged and audited) says why
// in its Description and Reason.
func (m *Mastio) CheckChallengedAssertion(ctx context.Context, r *http.Request, agentID, assertion, nonce string) (*Refusal, error) {
	deny := func(desc, reason string) (*Refusal, error) {
		ref := &Refusal{Status: 401, Code: "invalid_client", Description: desc, Reason: reason, NoChallenge: true, AgentID: agentID}
		m.noteRefusal(r, ref, KindToken, "challenged assertion refused") // the client certificate names the agent: audited
		return ref, nil
	}
	exp, err := m.checkChallenge(agentID, nonce, time.Now())
	if err != nil {
		return deny(err.Error(), "invalid_challenge")
	}
	as, aid, ref := m.VerifyAssertion(r, assertion)
	if ref != nil {
		return deny(ref.Description, ref.Reason)
	}
	if aid.AgentID != agentID {
		return deny("the assertion is for another agent than the client certificate", "cert_agent_mismatch")
	}
	if as.Nonce != nonce {
		return deny("the assertion's nonce claim does not match the challenge", "nonce_mismatch")
	}
	fresh, err := m.replay.Use(ctx, "challenge|"+nonce, exp.Add(time.Minute))
	if err != nil {
		return nil, err
	}
	if !fresh {
		return deny("this login challenge was already used", "challenge_replay")
	}
	return nil, nil
}
