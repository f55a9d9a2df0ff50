package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
	"github.com/caddy-mastio/caddy-mastio/internal/loadgen"
)

// scale measures what grows with the data: start-up time and the pin
// check with agents registered, and a whole-chain verify of rows audit
// rows. Rows carry the figure in p50_ms (a time) or calls_per_s (a rate).
func scale(bin string, up upstreams, agents, rows int) ([]Row, error) {
	var out []Row
	g, err := startGateway(bin, "full", up)
	if err != nil {
		return nil, err
	}
	defer g.stop()
	empty, err := g.restart()
	if err != nil {
		return nil, err
	}
	out = append(out, Row{Name: "startup", P50ms: ms(empty)})
	g.halt()
	db := filepath.Join(g.dir, "data", "mastio.db")
	sums, err := addAgents(db, agents)
	if err != nil {
		return nil, err
	}
	full, err := g.restart()
	if err != nil {
		return nil, err
	}
	out = append(out, Row{Name: fmt.Sprintf("startup_%d_agents", agents), P50ms: ms(full)})
	perCheck, err := pinCheck(filepath.Join(g.dir, "data"), sums)
	if err != nil {
		return nil, err
	}
	out = append(out, Row{Name: fmt.Sprintf("pin_check_%d_agents", agents), P50ms: ms(perCheck)})
	took, err := verifyRows(rows)
	if err != nil {
		return nil, err
	}
	out = append(out, Row{Name: fmt.Sprintf("verify_%d_rows", rows), P50ms: ms(took), CallsPerS: float64(rows) / took.Seconds()})
	return out, nil
}

// addAgents registers n agents straight in the database, in one
// transaction (certificates are pins only: the registry loads the pins,
// not the PEM), and returns their pins.
func addAgents(path string, n int) ([][32]byte, error) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	now := time.Now().UTC()
	sums := make([][32]byte, n)
	err = st.Update(ctx, func(tx store.Tx) error {
		for i := range sums {
			rand.Read(sums[i][:])
			id := fmt.Sprintf("bench::scale-%d", i)
			if err := tx.InsertAgent(ctx, &store.Agent{AgentID: id, Name: fmt.Sprintf("scale-%d", i), SPIFFEID: "spiffe://mastio.local/bench/" + id,
				Status: store.AgentActive, Capabilities: []string{"mcp:call"}, Groups: []string{}, EnrollmentMethod: "admin", CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
			if err := tx.InsertCert(ctx, &store.Cert{SHA256: hex.EncodeToString(sums[i][:]), AgentID: id, Serial: fmt.Sprint(i),
				Status: store.CertActive, NotBefore: now, NotAfter: now.Add(365 * 24 * time.Hour), CreatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	return sums, err
}

// pinCheck loads the registry of dataDir and measures one pin check.
func pinCheck(dataDir string, sums [][32]byte) (time.Duration, error) {
	st, err := sqlite.OpenReadOnly(filepath.Join(dataDir, "mastio.db"))
	if err != nil {
		return 0, err
	}
	defer st.Close()
	ca, _, err := pki.Prepare(pki.Config{Dir: filepath.Join(dataDir, "pki")})
	if err != nil {
		return 0, err
	}
	reg, err := registry.Open(context.Background(), registry.Config{Store: st, CA: ca, Org: "bench"})
	if err != nil {
		return 0, err
	}
	var failed bool
	res := testing.Benchmark(func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, cerr := reg.Check(sums[i%len(sums)]); cerr != nil {
				failed = true
			}
		}
	})
	if failed {
		return 0, fmt.Errorf("a registered pin was not found")
	}
	return time.Duration(res.NsPerOp()), nil
}

// verifyRows writes a chain of n rows and times a whole verify of it.
func verifyRows(n int) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "mastio-bench-verify-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "audit.db")
	ctx := context.Background()
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		return 0, err
	}
	prev := store.GenesisHash
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const chunk = 10_000
	for from := int64(1); from <= int64(n); from += chunk {
		rows := make([]store.AuditRow, 0, chunk)
		for seq := from; seq < from+chunk && seq <= int64(n); seq++ {
			details, _ := json.Marshal(map[string]any{"n": seq, "server": "weather", "name": "get_forecast"})
			r := audit.Record{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Millisecond), Type: "mcp.call", Actor: "agent:bench::a",
				Subject: "weather/get_forecast", Result: "ok", Details: details, PrevHash: prev}
			h, err := r.ComputeHash()
			if err != nil {
				st.Close()
				return 0, err
			}
			rows = append(rows, store.AuditRow{Seq: seq, Time: r.Time.Format(audit.TimeFormat), Type: r.Type, Actor: r.Actor,
				Subject: r.Subject, Result: r.Result, Details: details, PrevHash: prev, Hash: h})
			prev = h
		}
		if err := st.Update(ctx, func(tx store.Tx) error { return tx.AppendAudit(ctx, rows...) }); err != nil {
			st.Close()
			return 0, err
		}
	}
	st.Close()
	ro, err := sqlite.OpenReadOnly(path)
	if err != nil {
		return 0, err
	}
	defer ro.Close()
	start := time.Now()
	res, err := audit.Verify(context.Background(), ro, 1, 0)
	took := time.Since(start)
	if err != nil {
		return 0, err
	}
	if !res.OK() || res.Checked != int64(n) {
		return 0, fmt.Errorf("verify: %+v", res)
	}
	return took, nil
}

// sessionMemory opens n MCP sessions through g's gateway (initialize,
// left open) and returns the Go heap they hold in g, in MiB, after a
// garbage collection before and after.
func sessionMemory(g *gateway, n int) (float64, error) {
	before, err := g.heapAfterGC()
	if err != nil {
		return 0, err
	}
	h, err := proofs(g, "POST", "/gws", n)
	if err != nil {
		return 0, err
	}
	initialize := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}`
	if _, err := loadgen.Run(loadgen.Target{URL: g.url("/gws"), Body: initialize, Header: h, TLS: g.tlsConfig(),
		Check: func(status int, body []byte) error {
			if status != 200 || !bytes.Contains(body, []byte("serverInfo")) {
				return fmt.Errorf("%d %s", status, body)
			}
			return nil
		}}, n, 16, 0); err != nil {
		return 0, err
	}
	after, err := g.heapAfterGC()
	if err != nil {
		return 0, err
	}
	return (after - before) / (1 << 20), nil
}
