package audit_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
)

// BenchmarkAppend measures appends (each Append returns after its commit,
// fsynced with SyncFull, handed to the OS with SyncOS) with 1, 8 and 64
// concurrent appenders. The rows/s metric is the figure reported in the
// README.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []audit.Sync{audit.SyncFull, audit.SyncOS} {
		for _, appenders := range []int{1, 8, 64} {
			benchmarkAppend(b, mode, appenders)
		}
	}
}

func benchmarkAppend(b *testing.B, mode audit.Sync, appenders int) {
	b.Run(fmt.Sprintf("sync=%s/appenders=%d", mode, appenders), func(b *testing.B) {
		l, _ := newLog(b)
		l.SetSync(mode)
		ctx := context.Background()
		ev := audit.Event{Type: "mcp.tool_call", Actor: "agent:acme::bench", Subject: "server.tool",
			Details: map[string]any{"decision": "allow", "rule": "allow-all", "args_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "duration_ms": 3}}
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		for g := 0; g < appenders; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(b.N) {
					if _, err := l.Append(ctx, ev); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	})
}

// BenchmarkRawBatchedInsert is the floor the audit writer is compared
// with: prepared INSERTs of similar rows, 100 per transaction, same
// pragmas (WAL, synchronous=FULL), no hashing, no canonical JSON.
func BenchmarkRawBatchedInsert(b *testing.B) {
	_, st := newLog(b)
	db := st.Raw()
	ctx := context.Background()
	details := `{"args_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","decision":"allow","duration_ms":3,"rule":"allow-all"}`
	h := sha256.Sum256([]byte("x"))
	b.ResetTimer()
	seq := int64(0)
	for seq < int64(b.N) {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		stmt, _ := tx.PrepareContext(ctx, `INSERT INTO audit_events (seq, time, event_type, actor, subject, result, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		for i := 0; i < 100 && seq < int64(b.N); i++ {
			seq++
			if _, err := stmt.ExecContext(ctx, seq, "2026-11-28T00:00:00.000000000Z", "mcp.tool_call", "agent:acme::bench", "server.tool", "ok", details, h[:], h[:]); err != nil {
				b.Fatal(err)
			}
		}
		stmt.Close()
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
