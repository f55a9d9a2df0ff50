package caddymastio

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func adapt(t testing.TB, src string) ([]byte, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, _, err := adapter.Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// TestCaddyfileAdapt runs the golden files in testdata/caddyfile_adapt: a
// Caddyfile, a line of dashes, and the JSON it must adapt to. They are the
// reference for each directive's and option's JSON. Set
// MASTIO_UPDATE_GOLDEN=1 to rewrite them after an intended change.
func TestCaddyfileAdapt(t *testing.T) {
	files, _ := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if len(files) == 0 {
		t.Fatal("no golden files")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, _ := os.ReadFile(f)
			src, want, ok := strings.Cut(string(data), "\n----------\n")
			if !ok {
				t.Fatal("missing ---------- separator")
			}
			out, err := adapt(t, src)
			if err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			json.Indent(&got, out, "", "\t")
			if os.Getenv("MASTIO_UPDATE_GOLDEN") == "1" {
				os.WriteFile(f, []byte(src+"\n----------\n"+got.String()+"\n"), 0o644)
				return
			}
			if strings.TrimSpace(got.String()) != strings.TrimSpace(want) {
				t.Fatalf("adapted JSON differs:\n%s", got.String())
			}
		})
	}
}

func TestCaddyfileExampleAdapts(t *testing.T) {
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	out, err := adapt(t, string(src))
	if err != nil {
		t.Fatalf("Caddyfile.example: %v", err)
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	json.Unmarshal(out, &cfg)
	for _, app := range []string{"mastio", "http", "tls"} {
		if _, ok := cfg.Apps[app]; !ok {
			t.Errorf("app %s missing from adapted Caddyfile.example", app)
		}
	}
	if _, ok := cfg.Apps["pki"]; ok {
		t.Error("Caddyfile.example sets up Caddy's pki app (a second, unused CA)")
	}
	for _, want := range []string{`"issuers":[{"module":"mastio"}]`, `"ca":{"provider":"mastio"}`, `"mode":"verify_if_given"`,
		`"verifiers":[{"verifier":"mastio"}]`, `"handler":"mastio"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted Caddyfile.example lacks %s", want)
		}
	}
}

func TestCaddyfileErrorsNameOptionAndLine(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	os.WriteFile(file, nil, 0o600)
	cases := []struct{ name, src, want string }{
		{"unknown option", "{\n\tmastio {\n\t\tdata_dri ./data\n\t}\n}\n", `unrecognized mastio option "data_dri"`},
		{"duplicate option", "{\n\tmastio {\n\t\torg_id a\n\t\torg_id b\n\t}\n}\n", "org_id specified more than once"},
		{"missing value", "{\n\tmastio {\n\t\ttrust_domain\n\t}\n}\n", "trust_domain needs a value"},
		{"extra value", "{\n\tmastio {\n\t\torg_id a b\n\t}\n}\n", "org_id takes one value"},
		{"bad org id", "{\n\tmastio {\n\t\torg_id a/b\n\t}\n}\n", "invalid org_id"},
		{"bad trust domain", "{\n\tmastio {\n\t\ttrust_domain UPPER\n\t}\n}\n", "invalid trust domain"},
		{"bad public url", "{\n\tmastio {\n\t\tpublic_url https://x/y\n\t}\n}\n", "public_url"},
		{"literal weak secret", "{\n\tmastio {\n\t\tadmin_secret changeme\n\t}\n}\n", "too short"},
		{"args on option", "{\n\tmastio x\n}\n", "wrong argument count"},
		{"unknown key store", "{\n\tmastio {\n\t\tca_key_store floppy\n\t}\n}\n", "mastio.ca_key_stores.floppy"},
		{"unknown vault option", "{\n\tmastio {\n\t\tca_key_store vault {\n\t\t\tsecret x\n\t\t}\n\t}\n}\n", `unknown vault option "secret"`},
		{"vault option without value", "{\n\tmastio {\n\t\tca_key_store vault {\n\t\t\taddress\n\t\t}\n\t}\n}\n", "wrong argument count"},
		{"bad vault timeout", "{\n\tmastio {\n\t\tca_key_store vault {\n\t\t\ttimeout soon\n\t\t}\n\t}\n}\n", "vault timeout"},
		{"two key stores", "{\n\tmastio {\n\t\tca_key_store vault\n\t\tca_key_store vault\n\t}\n}\n", "ca_key_store specified more than once"},
		{"bad issuer lifetime", "localhost {\n\ttls {\n\t\tissuer mastio {\n\t\t\tlifetime 3 days\n\t\t}\n\t}\n}\n", "lifetime"},
		{"unparsable issuer lifetime", "localhost {\n\ttls {\n\t\tissuer mastio {\n\t\t\tlifetime soon\n\t\t}\n\t}\n}\n", `lifetime "soon"`},
		{"unknown issuer option", "localhost {\n\ttls {\n\t\tissuer mastio {\n\t\t\tca local\n\t\t}\n\t}\n}\n", `unrecognized mastio issuer option "ca"`},
		{"trust pool args", "localhost {\n\ttls {\n\t\tclient_auth {\n\t\t\ttrust_pool mastio extra\n\t\t}\n\t}\n}\n", "wrong argument count"},
		{"handler args", "localhost {\n\tmastio extra\n}\n", "wrong argument count"},
		{"verifier args", "localhost {\n\ttls {\n\t\tclient_auth {\n\t\t\tverifier mastio x\n\t\t}\n\t}\n}\n", "wrong argument count"},
		{"bad cert lifetime", "{\n\tmastio {\n\t\tagent_cert_lifetime 90d 1y\n\t}\n}\n", "takes one value"},
		{"unparsable cert lifetime", "{\n\tmastio {\n\t\tagent_cert_lifetime forever\n\t}\n}\n", `agent_cert_lifetime "forever"`},
		{"short cert lifetime", "{\n\tmastio {\n\t\tagent_cert_lifetime 10m\n\t}\n}\n", "at least 1h"},
		{"long enrollment ttl", "{\n\tmastio {\n\t\tenrollment_ttl 30d\n\t}\n}\n", "between 1m and 7d"},
		{"bad nonce mode", "{\n\tmastio {\n\t\tdpop_nonce sometimes\n\t}\n}\n", "want off, optional or required"},
		{"short token ttl", "{\n\tmastio {\n\t\ttoken_ttl 1s\n\t}\n}\n", "token_ttl must be between"},
		{"bearer with value", "{\n\tmastio {\n\t\tallow_bearer_tokens yes\n\t}\n}\n", "wrong argument count"},
		{"auth bad mode", "localhost {\n\tmastio_auth password\n}\n", "not token or mtls"},
		{"auth unknown option", "localhost {\n\tmastio_auth {\n\t\trealm x\n\t}\n}\n", `unrecognized mastio_auth option "realm"`},
		{"auth scope without value", "localhost {\n\tmastio_auth {\n\t\tscope\n\t}\n}\n", "wrong argument count"},
		{"bad policy rule", "{\n\tmastio {\n\t\tpolicy {\n\t\t\tallow agent:a tools/call\n\t\t}\n\t}\n}\n", `policy rule "allow agent:a tools/call"`},
		{"unknown policy effect", "{\n\tmastio {\n\t\tpolicy {\n\t\t\tpermit agent:a tools/call s/t\n\t\t}\n\t}\n}\n", `policy rule "permit`},
		{"empty policy", "{\n\tmastio {\n\t\tpolicy {\n\t\t}\n\t}\n}\n", "policy block is empty"},
		{"two policies", "{\n\tmastio {\n\t\tpolicy {\n\t\t\tallow agent:a tools/call s/t\n\t\t}\n\t\tpolicy {\n\t\t\tallow agent:a tools/call s/t\n\t\t}\n\t}\n}\n", "policy specified more than once"},
		{"mcp server without name", "{\n\tmastio {\n\t\tmcp_server {\n\t\t\turl http://x\n\t\t}\n\t}\n}\n", "mcp_server needs a name"},
		{"mcp server bad name", "{\n\tmastio {\n\t\tmcp_server a/b {\n\t\t\turl http://x\n\t\t}\n\t}\n}\n", `MCP server name "a/b"`},
		{"mcp server without url", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\ttimeout 5s\n\t\t}\n\t}\n}\n", "must be an http(s) URL"},
		{"mcp server bad url", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl ftp://x\n\t\t}\n\t}\n}\n", `url "ftp://x"`},
		{"mcp server twice", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t}\n\t\tmcp_server s {\n\t\t\turl http://y\n\t\t}\n\t}\n}\n", "defined more than once"},
		{"mcp server unknown option", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\tapi_key k\n\t\t}\n\t}\n}\n", `unrecognized option "api_key"`},
		{"mcp server bad timeout", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\ttimeout -1s\n\t\t}\n\t}\n}\n", `timeout "-1s"`},
		{"mcp server header arity", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\theader X-A\n\t\t}\n\t}\n}\n", "header takes a name and a value"},
		{"mcp server bad prefix", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\tprefix a.b\n\t\t}\n\t}\n}\n", `prefix "a.b"`},
		{"oauth without client id", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\toauth {\n\t\t\t\ttoken_url https://a/t\n\t\t\t\tclient_secret x\n\t\t\t}\n\t\t}\n\t}\n}\n", "oauth needs a client_id"},
		{"oauth two secrets", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\toauth {\n\t\t\t\ttoken_url https://a/t\n\t\t\t\tclient_id c\n\t\t\t\tclient_secret x\n\t\t\t\tclient_secret_name y\n\t\t\t}\n\t\t}\n\t}\n}\n", "one of client_secret and client_secret_name"},
		{"oauth plain http", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\toauth {\n\t\t\t\ttoken_url http://auth.example/t\n\t\t\t\tclient_id c\n\t\t\t\tclient_secret x\n\t\t\t}\n\t\t}\n\t}\n}\n", "http only to a loopback address"},
		{"oauth and bearer", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\tbearer_secret b\n\t\t\toauth {\n\t\t\t\ttoken_url https://a/t\n\t\t\t\tclient_id c\n\t\t\t\tclient_secret x\n\t\t\t}\n\t\t}\n\t}\n}\n", "not several"},
		{"oauth unknown option", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\toauth {\n\t\t\t\tgrant password\n\t\t\t}\n\t\t}\n\t}\n}\n", `oauth: unrecognized option "grant"`},
		{"client certificate with value", "{\n\tmastio {\n\t\tmcp_server s {\n\t\t\turl http://x\n\t\t\tclient_certificate yes\n\t\t}\n\t}\n}\n", "client_certificate takes no value"},
		{"mastio_mcp without server", "localhost {\n\tmastio_mcp\n}\n", "needs the server name"},
		{"mastio_mcp two servers", "localhost {\n\tmastio_mcp a b\n}\n", "wrong argument count"},
		{"mastio_mcp unknown option", "localhost {\n\tmastio_mcp a {\n\t\tpolicy x\n\t}\n}\n", `unrecognized mastio_mcp option "policy"`},
		{"mastio_mcp bad rate", "localhost {\n\tmastio_mcp a {\n\t\tagent_rate fast\n\t}\n}\n", `agent_rate "fast": want calls per minute or off`},
		{"mastio_mcp bad size", "localhost {\n\tmastio_mcp a {\n\t\tmax_request_bytes 0\n\t}\n}\n", "want a positive number of bytes"},
		{"mastio_mcp bad timeout", "localhost {\n\tmastio_mcp a {\n\t\ttimeout never\n\t}\n}\n", `timeout "never"`},
		{"anonymous rate unknown route", "{\n\tmastio {\n\t\tanonymous_rate login 5 10\n\t}\n}\n", `unknown route "login" (known: enrollment, enrollment_status, token)`},
		{"anonymous rate arity", "{\n\tmastio {\n\t\tanonymous_rate token 5\n\t}\n}\n", "takes a route and two rates"},
		{"anonymous rate bad value", "{\n\tmastio {\n\t\tanonymous_rate token 5 lots\n\t}\n}\n", `"lots": want requests per minute or off`},
		{"audit sync unknown", "{\n\tmastio {\n\t\taudit_sync sometimes\n\t}\n}\n", `audit_sync "sometimes": want full or os`},
		{"audit checkpoint interval too short", "{\n\tmastio {\n\t\taudit_checkpoint_interval 10s\n\t}\n}\n", "audit_checkpoint_interval must be at least 1m"},
		{"audit verify interval too short", "{\n\tmastio {\n\t\taudit_verify_interval 10ms\n\t}\n}\n", "audit_verify_interval must be at least 1s"},
		{"audit commit delay bad", "{\n\tmastio {\n\t\taudit_commit_delay soon\n\t}\n}\n", `audit_commit_delay "soon"`},
		{"audit commit delay missing", "{\n\tmastio {\n\t\taudit_commit_delay\n\t}\n}\n", "audit_commit_delay needs a duration"},
		{"audit commit delay twice", "{\n\tmastio {\n\t\taudit_commit_delay off\n\t\taudit_commit_delay 1ms\n\t}\n}\n", "audit_commit_delay specified more than once"},
		{"anonymous rate twice", "{\n\tmastio {\n\t\tanonymous_rate token 5 10\n\t\tanonymous_rate token 6 10\n\t}\n}\n", "anonymous_rate token specified more than once"},
		{"duplicate ttl", "{\n\tmastio {\n\t\tenrollment_ttl 5m\n\t\tenrollment_ttl 6m\n\t}\n}\n", "more than once"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := adapt(t, c.src)
			if err == nil {
				t.Fatal("adapted without error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error %q does not name the file and line", err)
			}
		})
	}
}

// A Caddyfile may be adapted on another machine than the one that runs
// it: adapting does not look at the data directory; provisioning the
// config where it runs does, and says what is wrong with it.
func TestDataDirIsCheckedWhereTheConfigRuns(t *testing.T) {
	file := filepath.Join(t.TempDir(), "a-file")
	os.WriteFile(file, nil, 0o600)
	if _, err := adapt(t, "{\n\tmastio {\n\t\tdata_dir "+file+"/data\n\t}\n}\n"); err != nil {
		t.Fatalf("adapting looked at the data directory: %v", err)
	}
	err := provision(t, &App{DataDir: file + "/data", AdminSecret: testSecret})
	if err == nil || !strings.Contains(err.Error(), "data_dir") || !strings.Contains(err.Error(), "is not a directory") {
		t.Fatalf("provisioning over a file: %v", err)
	}
}

func TestGlobalOptionOnlyOnce(t *testing.T) {
	_, err := adapt(t, "{\n\tmastio\n\tmastio\n}\n")
	if err == nil {
		t.Fatal("two mastio blocks adapted")
	}
}
