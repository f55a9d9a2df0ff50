package admin_test

import (
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
