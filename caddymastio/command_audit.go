package caddymastio

import (
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

func auditCommand() *cobra.Command {
	var db string
	var from, to int64
	verify := &cobra.Command{
		Use:   "verify --db <mastio.db> [--from N] [--to N]",
		Short: "Verify the audit hash chain offline",
		Long: `Walks the audit chain of a database (a live one or a backup copy) and reports
the first row whose link or content is wrong. Exit status 0: intact; 1:
broken at the reported seq; 2: could not be read.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			h, err := sqlite.OpenReadOnly(db)
			if err != nil {
				fmt.Fprintln(os.Stderr, "audit verify:", err)
				os.Exit(2)
			}
			defer h.Close()
			res, err := audit.Verify(cmd.Context(), h, from, to)
			if err != nil {
				fmt.Fprintln(os.Stderr, "audit verify:", err)
				os.Exit(2)
			}
			if !res.OK() {
				fmt.Printf("BROKEN at seq %d: %s (%d rows verified before it)\n", res.FirstBad, res.Reason, res.Checked)
				os.Exit(1)
			}
			fmt.Printf("OK: %d rows verified (seq %d-%d), head %x\n", res.Checked, res.From, res.To, res.HeadHash)
			return nil
		},
	}
	verify.Flags().StringVar(&db, "db", "./data/mastio.db", "the database file")
	verify.Flags().Int64Var(&from, "from", 1, "first seq")
	verify.Flags().Int64Var(&to, "to", 0, "last seq (0: the newest)")
	c := &cobra.Command{Use: "audit", Short: "Audit log tools"}
	c.AddCommand(verify, auditExportCommand())
	return c
}

func auditExportCommand() *cobra.Command {
	var db, out string
	query := map[string]*string{}
	c := &cobra.Command{
		Use:   "export --db <mastio.db> [--format ndjson|csv] [--start T] [--end T] [--event-type T] [--actor A] [--after-seq N] [--limit N] [--out FILE]",
		Short: "Export audit rows offline, as the admin API's GET /v1/admin/audit/export does",
		Long: `Writes the selected audit rows of a database (a live one or a backup copy) in
chain order, one JSON object per line (ndjson) or as CSV, with each row's seq,
time, type, actor, subject, result, details, prev_hash and hash (hex). Rows
are read one at a time: memory does not grow with the export. The database is
opened read-only, so unlike the admin API this records no audit.exported row.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for flag, v := range query {
				if cmd.Flags().Changed(flag) {
					q.Set(strings.ReplaceAll(flag, "-", "_"), *v) // the query parameter of the flag
				}
			}
			f, format, qerr := audit.ParseExportQuery(q)
			if qerr != nil {
				return fmt.Errorf("--%s: %w", strings.ReplaceAll(qerr.Field, "_", "-"), qerr)
			}
			h, err := sqlite.OpenReadOnly(db)
			if err != nil {
				return err
			}
			defer h.Close()
			w := os.Stdout
			if out != "" {
				if w, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
					return err
				}
			}
			res, err := audit.Export(cmd.Context(), h, f, format, w)
			if out != "" {
				if cerr := w.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				return fmt.Errorf("export stopped after %d rows: %w", res.Rows, err)
			}
			fmt.Fprintf(os.Stderr, "exported %d rows (seq %d-%d)\n", res.Rows, res.First, res.Last)
			return nil
		},
	}
	c.Flags().StringVar(&db, "db", "./data/mastio.db", "the database file")
	c.Flags().StringVar(&out, "out", "", "write to this new file (mode 0600) instead of standard output")
	for name, usage := range map[string]string{
		"format":     "ndjson or csv",
		"start":      "RFC 3339 time: rows at or after it",
		"end":        "RFC 3339 time: rows before it",
		"event-type": "only rows of this event type",
		"actor":      "only rows of this actor",
		"after-seq":  "only rows after this seq (to resume an export)",
		"limit":      "at most this many rows",
	} {
		query[name] = c.Flags().String(name, "", usage)
	}
	return c
}
