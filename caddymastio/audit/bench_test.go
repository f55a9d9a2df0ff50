package audit_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
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

// chainOf fills a new log with n chained rows of a typical MCP call's
// size, 10,000 per transaction, and returns it.
func chainOf(b *testing.B, n int) *testDB {
	b.Helper()
	l, st := newLog(b)
	ctx := context.Background()
	for done := 0; done < n; {
		batch := min(10000, n-done)
		if _, err := l.Change(ctx, func(c *audit.Change) error {
			for i := range batch {
				c.Record(audit.Event{Type: "mcp.call", Actor: "agent:acme::bench", Subject: "weather/get_forecast",
					Details: map[string]any{"decision": "allow", "rule": "config:1", "outcome": "ok", "n": done + i,
						"args_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "duration_ms": 3.2}})
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		done += batch
	}
	return st
}

// benchRows is how many rows the export and verify benchmarks walk:
// MASTIO_BENCH_AUDIT_ROWS, default 100,000 (the README's figures use
// 1,000,000).
func benchRows() int {
	if n, err := strconv.Atoi(os.Getenv("MASTIO_BENCH_AUDIT_ROWS")); err == nil && n > 0 {
		return n
	}
	return 100000
}

// peakHeap samples the live heap every 5 ms until stop is called, which
// returns the largest sample in MiB.
func peakHeap() (stop func() float64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return func() float64 {
		close(done)
		<-finished
		return float64(peak.Load()) / (1 << 20)
	}
}

// BenchmarkExport streams the whole chain (benchRows rows) as ndjson and
// as CSV to nowhere; it reports rows/s and the peak live heap, which must
// not grow with the rows.
func BenchmarkExport(b *testing.B) {
	rows := benchRows()
	st := chainOf(b, rows)
	for _, format := range []string{audit.FormatNDJSON, audit.FormatCSV} {
		b.Run(format, func(b *testing.B) {
			runtime.GC()
			stop := peakHeap()
			b.ResetTimer()
			for range b.N {
				out, err := audit.Export(context.Background(), st, store.AuditFilter{}, format, io.Discard)
				if err != nil || out.Rows != int64(rows) {
					b.Fatalf("%+v %v", out, err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(stop(), "peak-heap-MiB")
		})
	}
}

// BenchmarkVerify walks the whole chain (benchRows rows), checking every
// link and hash.
func BenchmarkVerify(b *testing.B) {
	rows := benchRows()
	st := chainOf(b, rows)
	runtime.GC()
	stop := peakHeap()
	b.ResetTimer()
	for range b.N {
		res, err := audit.Verify(context.Background(), st, 1, 0)
		if err != nil || !res.OK() || res.Checked != int64(rows) {
			b.Fatalf("%+v %v", res, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rows*b.N)/b.Elapsed().Minutes(), "rows/min")
	b.ReportMetric(stop(), "peak-heap-MiB")
}
