package admin_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/internal/httpjson"
)

// FuzzRequestBodies checks the strict decoder of the admin API's and the
// enrollment endpoint's bodies against encoding/json, which anything
// downstream (a log reader, a proxy, a client library) would use: a body
// the Mastio accepts reads the same with it, so no reader sees another
// request than the one the Mastio decided on.
func FuzzRequestBodies(f *testing.F) {
	for _, seed := range []string{
		`{"agent_name":"a","capabilities":["mcp:call"]}`,
		`{"agent_name":"a","agent_name":"b"}`,
		`{"Agent_Name":"a"}`,
		`{"agent_id":"x","capabilities":["c"],"groups":["g"]}`,
		`{"name":"files","url":"http://127.0.0.1/mcp","headers":{"a":"b"}}`,
		`{"reason":"compromised"}`,
		`{"pubkey_pem":"-----BEGIN PUBLIC KEY-----","requester":{"name":"n","email":"e"}}`,
		`{"recipients":["age1x"]}`,
	} {
		f.Add([]byte(seed))
	}
	types := []func() any{
		func() any { return new(admin.CreateAgentRequest) },
		func() any { return new(admin.ApproveRequest) },
		func() any { return new(admin.PutServerRequest) },
		func() any { return new(admin.RevokeRequest) },
		func() any { return new(admin.BackupRequest) },
		func() any { return new(registry.EnrollmentRequest) },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, mk := range types {
			ours := mk()
			if httpjson.DecodeBytes(body, ours) != nil {
				continue
			}
			theirs := mk()
			if err := json.Unmarshal(body, theirs); err != nil {
				t.Fatalf("%T: accepted %q, which encoding/json refuses: %v", ours, body, err)
			}
			if !reflect.DeepEqual(ours, theirs) {
				t.Fatalf("%T: %q reads as\n%+v here and as\n%+v with encoding/json", ours, body, ours, theirs)
			}
		}
	})
}
