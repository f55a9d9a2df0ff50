package caddymastio

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzCaddyfileOptions feeds the mastio global option's parser arbitrary
// lines: it must answer with an error or a configuration, never panic, and
// a configuration it makes is JSON that loads back into the app.
func FuzzCaddyfileOptions(f *testing.F) {
	for _, seed := range []string{
		"data_dir ./data\norg_id acme",
		"policy {\n\tallow agent:a tools/call s/t\n}",
		"mcp_server files {\n\turl http://127.0.0.1/mcp\n\theader X-A b\n\toauth {\n\t\ttoken_url https://a/t\n\t}\n}",
		"ca_key_store vault {\n\taddress http://v\n\ttimeout 3s\n}",
		"anonymous_rate enrollment 5 100\naudit_commit_delay off",
		"dpop_nonce optional\nallow_bearer_tokens",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, options string) {
		out, err := adapt(t, "{\n\tmastio {\n"+options+"\n\t}\n}\n")
		if err != nil {
			return
		}
		var cfg struct {
			Apps map[string]json.RawMessage `json:"apps"`
		}
		if err := json.Unmarshal(out, &cfg); err != nil {
			t.Fatalf("the adapted config is not JSON: %v\n%s", err, out)
		}
		if raw := cfg.Apps["mastio"]; raw != nil {
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(new(App)); err != nil {
				t.Fatalf("the adapted mastio app does not load back: %v\n%s", err, raw)
			}
		}
	})
}
