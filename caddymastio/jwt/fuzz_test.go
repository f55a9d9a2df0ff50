package jwt

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

// FuzzParse checks the compact JWS reader: whatever it accepts has one
// encoding (each segment is the unpadded base64url of what it decoded, so
// no two strings carry one token) and a header without duplicate names.
func FuzzParse(f *testing.F) {
	key := signers(f)[ES256]
	good, _ := Sign(key, map[string]any{"typ": "dpop+jwt", "kid": "k"}, map[string]any{"sub": "a", "n": 1})
	f.Add(good)
	parts := strings.Split(good, ".")
	enc := base64.RawURLEncoding.EncodeToString
	for _, h := range []string{`{"alg":"ES256","alg":"none"}`, `{"alg":"ES256","crit":[]}`, `{"alg":"ES256","typ":1}`, `{"alg":"ES256","\u006bid":"x"}`} {
		f.Add(enc([]byte(h)) + "." + parts[1] + "." + parts[2])
	}
	f.Add(parts[0] + "=." + parts[1] + "." + parts[2])
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			return
		}
		segs := strings.Split(s, ".")
		hdr, _ := base64.RawURLEncoding.Strict().DecodeString(segs[0])
		if enc(hdr) != segs[0] || enc(tok.Payload) != segs[1] || enc(tok.Signature) != segs[2] {
			t.Fatalf("%q has another encoding of the same token", s)
		}
		dec := jsontext.NewDecoder(bytes.NewReader(hdr))
		if _, err := dec.ReadValue(); err != nil {
			t.Fatalf("accepted a header the strict reader refuses: %v", err)
		}
	})
}
