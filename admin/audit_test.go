package admin_test

import (
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio/mastiotest"
)

// export fetches GET /v1/admin/audit/export?query.
func (e *env) export(query string) (*http.Response, string) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.url+"/v1/admin/audit/export?"+query, nil)
	req.Header.Set(admin.SecretHeader, mastiotest.AdminSecret)
	resp, err := e.c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestAuditExportStreamsTheChainInOrder(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for _, name := range []string{"exp-a", "exp-b", "exp-c"} {
		mastiotest.NewAgent(t, e.m, name)
	}
	resp, body := e.export("")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("export: %d %v", resp.StatusCode, resp.Header)
	}
	var rows []audit.ExportRow
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		var r audit.ExportRow
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		rows = append(rows, r)
	}
	if len(rows) < 4 || rows[0].Seq != 1 {
		t.Fatalf("%d rows, first %+v", len(rows), rows[0])
	}
	for i, r := range rows {
		if i > 0 && (r.Seq != rows[i-1].Seq+1 || r.PrevHash != rows[i-1].Hash) {
			t.Fatalf("row %d does not follow row %d", r.Seq, rows[i-1].Seq)
		}
		if _, err := hex.DecodeString(r.Hash); err != nil || len(r.Hash) != 64 {
			t.Fatalf("hash of row %d is not hex SHA-256: %q", r.Seq, r.Hash)
		}
	}
	// The export itself is recorded, with what it wrote.
	exported := mastiotest.Events(t, e.m, "audit.exported")
	if d := mastiotest.Details(t, exported[0]); len(exported) != 1 || d["rows"] != float64(len(rows)) || d["last_seq"] != float64(rows[len(rows)-1].Seq) {
		t.Fatalf("audit.exported: %+v", exported)
	}

	// Filters, and CSV.
	resp, body = e.export("format=csv&event_type=agent.created&after_seq=1&limit=2")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/csv") {
		t.Fatalf("csv export: %d %v", resp.StatusCode, resp.Header)
	}
	records, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil || len(records) != 3 || strings.Join(records[0], ",") != "seq,time,event_type,actor,subject,result,details,prev_hash,hash" {
		t.Fatalf("csv: %v %q", err, body)
	}
	for _, r := range records[1:] {
		if r[2] != "agent.created" || !json.Valid([]byte(r[6])) {
			t.Fatalf("csv row: %v", r)
		}
	}
}

func TestAuditExportRefusesAQueryItCannotHonour(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	for query, field := range map[string]string{
		"format=xml":               "format",
		"start=yesterday":          "start",
		"after_seq=-1":             "after_seq",
		"limit=0":                  "limit",
		"event=agent.created":      "event",
		"actor=a&actor=b":          "actor",
		"end=2026-13-01T00:00:00Z": "end",
	} {
		resp, body := e.export(query)
		var p map[string]any
		json.Unmarshal([]byte(body), &p)
		if resp.StatusCode != 400 || p["field"] != field || p["error"] != "invalid_query" {
			t.Errorf("%s: %d %s", query, resp.StatusCode, body)
		}
	}
	if n := len(mastiotest.Events(t, e.m, "audit.exported")); n != 0 {
		t.Fatalf("%d exports recorded for refused queries", n)
	}
}

func TestAuditHeadIsSignedByTheMastio(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	status, v := e.do("GET", "/v1/admin/audit/head", "")
	e.want(status, v, 200, "head")
	jws, _ := v["jws"].(string)
	c, chain, err := audit.VerifyCheckpoint(jws, e.m.CA().RootPool())
	if err != nil || c.Seq != int64(v["seq"].(float64)) || c.Hash != v["hash"] || c.Org != e.m.OrgID() {
		t.Fatalf("checkpoint %+v: %v (answer %v)", c, err, v)
	}
	if chain[0].URIs[0].String() != e.m.AuditSignerSPIFFEID().String() {
		t.Fatalf("signed by %v", chain[0].URIs)
	}
	// The head's hash is the newest row's.
	var newest audit.Record
	for _, ev := range mastiotest.Events(t, e.m, "") {
		newest = ev
	}
	if newest.Seq != c.Seq || hex.EncodeToString(newest.Hash) != c.Hash {
		t.Fatalf("checkpoint of seq %d %s, newest row %d %x", c.Seq, c.Hash, newest.Seq, newest.Hash)
	}

	// Another Mastio's checkpoint, or one whose payload was changed,
	// does not verify against this Org root.
	other := mastiotest.New(t, mastio.Settings{}, nil)
	_, otherJWS, err := other.AuditCheckpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := audit.VerifyCheckpoint(otherJWS, e.m.CA().RootPool()); err == nil || !strings.Contains(err.Error(), "Org root") {
		t.Fatalf("another Mastio's checkpoint: %v", err)
	}
	parts := strings.Split(jws, ".")
	forged, _ := json.Marshal(audit.Checkpoint{Org: c.Org, Seq: c.Seq + 1, Hash: c.Hash, Time: c.Time})
	parts[1] = base64.RawURLEncoding.EncodeToString(forged)
	if _, _, err := audit.VerifyCheckpoint(strings.Join(parts, "."), e.m.CA().RootPool()); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("a forged checkpoint: %v", err)
	}
}

// Checkpoints in the chain: written when the chain grew (not twice over
// the same head), and at shutdown over the system.stop row.
func TestCheckpointsAreWrittenIntoTheChain(t *testing.T) {
	e := newEnv(t, mastio.Settings{})
	ctx := context.Background()
	if err := e.m.WriteCheckpoint(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.WriteCheckpoint(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	if n := len(mastiotest.Events(t, e.m, "audit.checkpoint")); n != 1 {
		t.Fatalf("%d checkpoints over one head, want 1", n)
	}
	if err := e.m.AuditShutdown(ctx); err != nil {
		t.Fatal(err)
	}
	all := mastiotest.Events(t, e.m, "")
	last, stop := all[len(all)-1], all[len(all)-2]
	d := mastiotest.Details(t, last)
	c, _, err := audit.VerifyCheckpoint(d["jws"].(string), e.m.CA().RootPool())
	if last.Type != "audit.checkpoint" || stop.Type != "system.stop" || err != nil || c.Seq != stop.Seq ||
		c.Hash != hex.EncodeToString(stop.Hash) || d["reason"] != "shutdown" {
		t.Fatalf("the last rows: %s %s %v %+v", stop.Type, last.Type, err, d)
	}
}
