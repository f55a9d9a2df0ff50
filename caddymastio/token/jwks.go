package token

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// buildJWKS renders the keys that verify tokens (active and deprecated in
// grace), sorted by kid, with a strong ETag over the body.
func buildJWKS(all map[string]*SigningKey, now time.Time) ([]byte, string) {
	kids := make([]string, 0, len(all))
	for kid, k := range all {
		if k.Status == "deprecated" && !k.ExpiresAt.IsZero() && now.After(k.ExpiresAt) {
			continue
		}
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	keys := make([]map[string]string, 0, len(kids))
	for _, kid := range kids {
		m, _, err := jwt.PublicJWK(all[kid].Public, kid, all[kid].Alg, "sig")
		if err == nil {
			keys = append(keys, m)
		}
	}
	body, _ := json.Marshal(map[string]any{"keys": keys})
	sum := sha256.Sum256(body)
	return body, `"` + hex.EncodeToString(sum[:16]) + `"`
}

// JWKS returns the JSON Web Key Set of the verifying keys and its ETag.
func (r *KeyRing) JWKS() ([]byte, string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.jwks, r.etag
}
