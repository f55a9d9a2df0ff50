package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// AssertionAudience is the aud of client assertions (the original SDK's).
const AssertionAudience = "agent-trust-broker"

// Session holds an agent's access token and signs requests with DPoP:
//
//	id, _ := client.LoadIdentity("./identity")
//	resp, _ := id.Session().HTTPClient().Get("https://mastio.example.com:9443/mcp")
//
// Every request carries the agent certificate (mTLS), Authorization: DPoP
// with a token minted at the Mastio (and refreshed before it expires), and
// a fresh DPoP proof with ath and the latest server nonce. A use_dpop_nonce
// answer is retried once with the new nonce; an invalid_token answer gets
// a new token and one retry.
type Session struct {
	id      *Identity
	base    string
	dpopKey crypto.Signer
	jwk     map[string]string
	jkt     string
	tr      http.RoundTripper

	mu      sync.Mutex
	token   string
	expires time.Time
	nonce   map[string]string // host -> last DPoP-Nonce seen
}

// Session returns a session for the identity's Mastio (its site URL).
func (id *Identity) Session() *Session {
	s, err := id.NewSession(id.URL, nil)
	if err != nil {
		panic(err) // only on an unusable DPoP key, which LoadIdentity rejects
	}
	return s
}

// NewSession returns a session for the Mastio at baseURL. base, if set,
// sends the requests; by default a transport presenting the agent
// certificate and trusting the identity's CA.
func (id *Identity) NewSession(baseURL string, base http.RoundTripper) (*Session, error) {
	key := id.DPoPKey
	if key == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		key = k
	}
	jwk, jkt, err := jwt.PublicJWK(key.Public(), "", "", "")
	if err != nil {
		return nil, err
	}
	if base == nil {
		base = &http.Transport{TLSClientConfig: id.TLSConfig(), ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 16,
			IdleConnTimeout: 90 * time.Second}
	}
	return &Session{id: id, base: strings.TrimSuffix(baseURL, "/"), dpopKey: key, jwk: jwk, jkt: jkt, tr: base,
		nonce: map[string]string{}}, nil
}

// JKT is the thumbprint of the session's DPoP key.
func (s *Session) JKT() string { return s.jkt }

// HTTPClient returns a client whose transport is the session.
func (s *Session) HTTPClient() *http.Client {
	return &http.Client{Transport: s, Timeout: 60 * time.Second}
}

// Assertion signs a client assertion with the agent key: x5c holds the
// certificate chain, sub and iss the agent id, exp five minutes ahead.
func (s *Session) Assertion(nonce string) (string, error) {
	var x5c []string
	for _, der := range s.id.Certificate.Certificate {
		x5c = append(x5c, base64.StdEncoding.EncodeToString(der))
	}
	signer, ok := s.id.Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return "", errors.New("the agent key cannot sign")
	}
	alg, err := jwt.AlgFor(signer)
	if err != nil {
		return "", err
	}
	now := time.Now().Unix()
	claims := map[string]any{"sub": s.id.AgentID, "iss": s.id.AgentID, "aud": AssertionAudience, "iat": now, "exp": now + 300,
		"jti": randomID()}
	if nonce != "" {
		claims["nonce"] = nonce
	}
	return jwt.Sign(signer, map[string]any{"alg": alg, "typ": "JWT", "x5c": x5c}, claims)
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Proof signs a DPoP proof for method and rawURL (query and fragment are
// left out of htu), bound to token when given, with the last nonce seen
// from that host.
func (s *Session) Proof(method, rawURL, token string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	claims := map[string]any{"jti": randomID(), "htm": method, "htu": u.Scheme + "://" + u.Host + u.EscapedPath(),
		"iat": time.Now().Unix()}
	if token != "" {
		sum := sha256.Sum256([]byte(token))
		claims["ath"] = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	s.mu.Lock()
	if n := s.nonce[u.Host]; n != "" {
		claims["nonce"] = n
	}
	s.mu.Unlock()
	return jwt.Sign(s.dpopKey, map[string]any{"typ": "dpop+jwt", "jwk": s.jwk}, claims)
}

func (s *Session) noteNonce(resp *http.Response) {
	if n := resp.Header.Get("DPoP-Nonce"); n != "" && resp.Request != nil {
		s.mu.Lock()
		s.nonce[resp.Request.URL.Host] = n
		s.mu.Unlock()
	}
}

// Token returns a valid access token, minting one when there is none or
// the current one is in its last fifth of life.
func (s *Session) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	if s.token != "" && time.Now().Before(s.expires) {
		t := s.token
		s.mu.Unlock()
		return t, nil
	}
	s.mu.Unlock()
	return s.mint(ctx)
}

// Invalidate drops the cached token so the next request mints a new one.
func (s *Session) Invalidate() {
	s.mu.Lock()
	s.token = ""
	s.mu.Unlock()
}

func (s *Session) mint(ctx context.Context) (string, error) {
	assertion, err := s.Assertion("")
	if err != nil {
		return "", err
	}
	body, _ := json.Marshal(map[string]string{"client_assertion": assertion})
	endpoint := s.base + "/v1/auth/token"
	for attempt := 0; ; attempt++ {
		proof, err := s.Proof("POST", endpoint, "")
		if err != nil {
			return "", err
		}
		req, _ := http.NewRequestWithContext(ctx, "POST", endpoint, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("DPoP", proof)
		resp, err := s.tr.RoundTrip(req)
		if err != nil {
			return "", fmt.Errorf("token request: %w", err)
		}
		s.noteNonce(resp)
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == 401 && attempt == 0 && strings.Contains(string(data), "use_dpop_nonce") {
			continue
		}
		if resp.StatusCode != 200 {
			e := &APIError{Status: resp.StatusCode, Body: string(data)}
			json.Unmarshal(data, e)
			return "", fmt.Errorf("token request: %w", e)
		}
		var tr struct {
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
		}
		if err := json.Unmarshal(data, &tr); err != nil || tr.AccessToken == "" {
			return "", errors.New("token request: no access_token in the answer")
		}
		life := time.Duration(tr.ExpiresIn) * time.Second
		s.mu.Lock()
		s.token, s.expires = tr.AccessToken, time.Now().Add(life*4/5)
		s.mu.Unlock()
		return tr.AccessToken, nil
	}
}

// RoundTrip implements http.RoundTripper.
func (s *Session) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := s.send(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 401 {
		return resp, nil
	}
	challenge := resp.Header.Get("WWW-Authenticate")
	retry := strings.Contains(challenge, "use_dpop_nonce")
	if strings.Contains(challenge, `error="invalid_token"`) {
		s.Invalidate()
		retry = true
	}
	if !retry || req.Body != nil && req.GetBody == nil {
		return resp, nil
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return s.send(req)
}

func (s *Session) send(orig *http.Request) (*http.Response, error) {
	tok, err := s.Token(orig.Context())
	if err != nil {
		return nil, err
	}
	req := orig.Clone(orig.Context())
	if orig.GetBody != nil {
		if req.Body, err = orig.GetBody(); err != nil {
			return nil, err
		}
	}
	proof, err := s.Proof(req.Method, req.URL.String(), tok)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "DPoP "+tok)
	req.Header.Set("DPoP", proof)
	resp, err := s.tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	s.noteNonce(resp)
	return resp, nil
}
