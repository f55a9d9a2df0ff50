package postgres

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/internal/pgtest"
)

// BenchmarkAuditAppend appends audit rows from 16 goroutines spread over 1
// or 3 instances (each its own connection pool and group-commit writer) to
// one chain on a real PostgreSQL, audit_sync full; it reports rows/s. The
// chain is verified after each run.
func BenchmarkAuditAppend(b *testing.B) {
	for _, instances := range []int{1, 3} {
		b.Run(fmt.Sprintf("instances=%d", instances), func(b *testing.B) {
			url := pgtest.Database(b)
			var logs []*audit.Log
			for range instances {
				db, err := Open(context.Background(), url)
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				l := audit.Open(db, audit.Options{})
				defer l.Close()
				logs = append(logs, l)
			}
			const workers = 16
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					l := logs[w%instances]
					for next.Add(1) <= int64(b.N) {
						if _, err := l.Append(context.Background(), audit.Event{Type: "bench.row", Actor: "system", Subject: "s"}); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			db, _ := Open(context.Background(), url)
			defer db.Close()
			if res, err := audit.Verify(context.Background(), db, 1, 0); err != nil || !res.OK() || res.Checked != int64(b.N) {
				b.Fatalf("the chain: %+v %v", res, err)
			}
		})
	}
}
