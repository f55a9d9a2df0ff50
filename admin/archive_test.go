package admin_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

func TestAuditArchiveRemovesOnlyWhatTheCallerHolds(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for _, name := range []string{"a-1", "a-2", "a-3"} {
		mastiotest.NewAgent(t, e.m, name)
	}
	rows := mastiotest.Events(t, e.m, "")
	through := rows[len(rows)-2]
	hash := fmt.Sprintf("%x", through.Hash)
	sum := strings.Repeat("0f", 32)
	body := func(seq int64, hash, sum string) string {
		return fmt.Sprintf(`{"through_seq": %d, "through_hash": %q, "archive_sha256": %q}`, seq, hash, sum)
	}
	for _, c := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"a hash that is not hex", body(through.Seq, "zz", sum), 400, "invalid_request"},
		{"no archive digest", `{"through_seq": 2, "through_hash": "` + hash + `"}`, 400, "invalid_request"},
		{"an unknown member", `{"through_seq": 2, "through_hash": "` + hash + `", "archive_sha256": "` + sum + `", "force": true}`, 400, "invalid_request"},
		{"a row the chain lacks", body(9999, hash, sum), 404, "no_such_row"},
		{"another chain's hash", body(through.Seq, strings.Repeat("ab", 32), sum), 409, "hash_mismatch"},
	} {
		status, v := e.do("POST", "/v1/admin/audit/archive", c.body)
		if status != c.status || v["error"] != c.code {
			t.Errorf("%s: %d %v, want %d %s", c.name, status, v, c.status, c.code)
		}
	}
	if n := len(mastiotest.Events(t, e.m, "")); n != len(rows) {
		t.Fatalf("refused archives changed the chain: %d rows, want %d", n, len(rows))
	}

	status, v := e.do("POST", "/v1/admin/audit/archive", body(through.Seq, hash, sum))
	e.want(status, v, 200, "archive")
	if v["removed"] != float64(through.Seq) || v["first_seq"] != float64(1) {
		t.Fatalf("archive answered %v", v)
	}
	left := mastiotest.Events(t, e.m, "")
	if left[0].Seq != through.Seq+1 || left[len(left)-1].Type != "audit.archived" {
		t.Fatalf("rows left: first %d, newest %s", left[0].Seq, left[len(left)-1].Type)
	}
	res, err := e.m.VerifyAudit(t.Context(), 1, 0)
	if err != nil || !res.OK() || res.Anchor.Seq != through.Seq || res.Anchor.ArchiveSHA256 != sum {
		t.Fatalf("verify after the archive: %+v %v", res, err)
	}
	if err := audit.VerifyAnchor(res.Anchor, e.m.CA().RootPool()); err != nil {
		t.Fatalf("the anchor's signature: %v", err)
	}
	other := mastiotest.New(t, mastio.Settings{}, nil)
	if err := audit.VerifyAnchor(res.Anchor, other.CA().RootPool()); err == nil || !strings.Contains(err.Error(), "does not chain to the Org root") {
		t.Fatalf("the anchor against another Mastio's root: %v", err)
	}
	status, v = e.do("POST", "/v1/admin/audit/archive", body(through.Seq, hash, sum))
	if status != 409 || v["error"] != "already_archived" {
		t.Fatalf("archiving twice: %d %v", status, v)
	}
}
