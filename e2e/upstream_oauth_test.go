package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// authServer runs oidc-provider (testdata/npm/oauth-server.mjs) on a
// loopback port with the client "mastio" (secret mastioSecret) and the
// resource server "search-server" (secret rsSecret). It returns its URL
// and the count of tokens it has issued.
func authServer(t *testing.T, mastioSecret, rsSecret string) (string, func() int) {
	t.Helper()
	npmDir := referenceNPM(t)
	port := freePort(t)
	cmd := exec.Command("node", filepath.Join(npmDir, "oauth-server.mjs"))
	cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "MASTIO_SECRET="+mastioSecret, "RS_SECRET="+rsSecret)
	out := startHelper(t, "the authorization server", cmd, func(out string) bool { return strings.Contains(out, "LISTENING") })
	return fmt.Sprintf("http://127.0.0.1:%d", port), func() int { return strings.Count(out.String(), "TOKEN_ISSUED") }
}

// introspector is an upstream MCP server's token check: RFC 7662
// introspection at the authorization server, as the resource server
// "search-server"; a token must be active, for resource, with scope
// "tools". It remembers the last token it accepted.
type introspector struct {
	as, secret, resource string
	mu                   sync.Mutex
	last                 string
}

func (in *introspector) verify(ctx context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
	req, _ := http.NewRequestWithContext(ctx, "POST", in.as+"/token/introspection", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("search-server", in.secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var info struct {
		Active bool   `json:"active"`
		Aud    string `json:"aud"`
		Scope  string `json:"scope"`
		Exp    int64  `json:"exp"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil || !info.Active || info.Aud != in.resource || info.Scope != "tools" {
		return nil, auth.ErrInvalidToken
	}
	in.mu.Lock()
	in.last = token
	in.mu.Unlock()
	return &auth.TokenInfo{Scopes: []string{info.Scope}, Expiration: time.Unix(info.Exp, 0)}, nil
}

func randomHex(t *testing.T) string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// TestAggregatorGetsUpstreamTokensWithClientCredentials: an upstream MCP
// server that accepts only OAuth access tokens of its authorization server
// (oidc-provider) is reached through the aggregator with tokens the
// Mastio gets by the client credentials grant: one token for many calls,
// a new one at once when the upstream refuses it (revoked), and neither
// the client secret nor a token in the logs.
func TestAggregatorGetsUpstreamTokensWithClientCredentials(t *testing.T) {
	mastioSecret, rsSecret := randomHex(t), randomHex(t)
	as, issued := authServer(t, mastioSecret, rsSecret)

	server := mcp.NewServer(&mcp.Implementation{Name: "search", Version: "1"}, nil)
	mcp.AddTool(server, &mcp.Tool{Name: "lookup"}, func(ctx context.Context, req *mcp.CallToolRequest, in struct {
		Q string `json:"q"`
	}) (*mcp.CallToolResult, any, error) {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "found " + in.Q}}}, nil, nil
	})
	in := &introspector{as: as, secret: rsSecret}
	up := httptest.NewServer(auth.RequireBearerToken(in.verify, nil)(
		mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return server }, nil)))
	t.Cleanup(up.Close)
	in.resource = up.URL + "/mcp"

	s := exampleServer(t, `
		policy {
			allow capability:mcp:call tools/call search/lookup
			allow capability:mcp:call tools/call wrongsecret/lookup
		}
		mcp_server search {
			url {$SEARCH_URL}
			oauth {
				token_url {$AS_URL}/token
				client_id mastio
				client_secret {env.SEARCH_OAUTH_SECRET}
				scope tools
			}
		}`, "", "SEARCH_URL="+in.resource, "AS_URL="+as, "SEARCH_OAUTH_SECRET="+mastioSecret)
	t.Cleanup(s.kill)

	// A second registration through the admin API, with a wrong secret:
	// kept in the key store, never shown; its server is left out.
	code, body := s.adminCall(t, "POST", "/v1/admin/mcp-servers", adminSecret, map[string]any{"name": "wrongsecret", "url": in.resource,
		"oauth": map[string]any{"token_url": as + "/token", "client_id": "mastio", "client_secret": "not-" + mastioSecret, "scopes": []string{"tools"}}})
	if code != 201 || strings.Contains(fmt.Sprint(body), mastioSecret) || body["oauth"].(map[string]any)["client_secret_name"] == nil {
		t.Fatalf("registering with an OAuth client secret: %d %v", code, body)
	}

	caller := makeIdentity(t, s, "searcher", "mcp:call")
	cs := connectMCPWith(t, s, caller, "/v1/mcp", nil, "2025-11-25")
	if got := strings.Join(toolNames(t, cs), ","); got != "search.lookup" {
		t.Fatalf("tools: %s (the server with the wrong secret is left out)", got)
	}
	for i := range 3 {
		if text, err := callText(cs, "search.lookup", map[string]any{"q": fmt.Sprint(i)}); err != nil || text != fmt.Sprintf("found %d", i) {
			t.Fatalf("call %d: %q %v", i, text, err)
		}
	}
	if n := issued(); n != 1 {
		t.Fatalf("%d tokens issued for one list and three calls, want 1 (reused)", n)
	}

	// The upstream's authorization server revokes the token: the next call
	// is refused with 401, and the Mastio gets a new token and sends the
	// call again.
	in.mu.Lock()
	token := in.last
	in.mu.Unlock()
	req, _ := http.NewRequest("POST", as+"/token/revocation", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("mastio", mastioSecret)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoking the token: %v %v", resp, err)
	}
	if text, err := callText(cs, "search.lookup", map[string]any{"q": "after"}); err != nil || text != "found after" {
		t.Fatalf("the call after the revocation: %q %v", text, err)
	}
	if n := issued(); n != 2 {
		t.Fatalf("%d tokens issued, want 2 (a new one after the revocation)", n)
	}

	closeSessions()
	s.stop()
	logs := s.out.String()
	for what, secret := range map[string]string{"client secret": mastioSecret, "access token": token} {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s reached the logs", what)
		}
	}
}
