package caddymastio

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/store/sqlite"
)

func auditCommand() *cobra.Command {
	var db, ca, tsaCA string
	var witnesses []string
	var from, to int64
	verify := &cobra.Command{
		Use:   "verify (BUNDLE [--ca org-ca.crt] [--tsa-ca FILE] [--witness SEQ:HASH]... | --db <mastio.db> [--ca org-ca.crt] [--from N] [--to N])",
		Short: "Verify an audit bundle, or the audit chain of a database, offline",
		Long: `With a bundle (POST /v1/admin/audit/bundle), checks it with nothing else: the
SHA-256 of every file against the manifest, every row's link and hash from the
start hash, the Mastio's signed checkpoint of the last row and its chain to the
Org root (--ca; without it, the bundle's own root, whose fingerprint is
printed), the RFC 3161 timestamp over the manifest (its authority against
--tsa-ca) and that it follows the last row, and hashes known from elsewhere
(--witness seq:hash, repeatable). Each check is printed.

With --db, walks the audit chain of a database (a live one or a backup copy)
and reports the first row whose link or content is wrong. After an archive
(caddy mastio audit archive) the walk starts from the signed anchor the
archive left, whose signature is checked against --ca (default: the Org CA
beside the database, <dir>/pki/org-ca.crt).

Exit status 0: intact; 1: broken (the first failing check, seq and why are
printed); 2: could not be read.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if cmd.Flags().Changed("db") {
					return fmt.Errorf("give a bundle or --db, not both")
				}
				os.Exit(verifyBundleFile(args[0], ca, tsaCA, witnesses))
			}
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
			if a := res.Anchor; a.Seq > 0 {
				os.Exit(verifyAnchor(a, ca, filepath.Join(filepath.Dir(db), "pki", "org-ca.crt"), res))
			}
			fmt.Printf("OK: %d rows verified (seq %d-%d), head %x\n", res.Checked, res.From, res.To, res.HeadHash)
			printUnknown(res.Unknown)
			return nil
		},
	}
	verify.Flags().StringVar(&db, "db", "./data/mastio.db", "the database file")
	verify.Flags().Int64Var(&from, "from", 1, "first seq (--db)")
	verify.Flags().Int64Var(&to, "to", 0, "last seq (--db; 0: the newest)")
	verify.Flags().StringVar(&ca, "ca", "", "the Org CA (PEM) the bundle's checkpoint, or the database's archive anchor, must chain to")
	verify.Flags().StringVar(&tsaCA, "tsa-ca", "", "the root (PEM) of the timestamp authority")
	verify.Flags().StringArrayVar(&witnesses, "witness", nil, "SEQ:HASH a row of the bundle must have (repeatable)")
	c := &cobra.Command{Use: "audit", Short: "Audit log tools"}
	c.AddCommand(verify, auditExportCommand(), auditArchiveCommand())
	return c
}

// verifyAnchor checks the signature of the archive anchor a database walk
// started from, against ca (or, when not given, the Org CA beside the
// database) and returns the exit status.
func verifyAnchor(a store.AuditAnchor, ca, besideDB string, res audit.VerifyResult) int {
	if ca == "" {
		if _, err := os.Stat(besideDB); err != nil {
			fmt.Fprintf(os.Stderr, "audit verify: the chain starts from an archive anchor at seq %d, whose signature needs the Org CA: give --ca\n", a.Seq)
			return 2
		}
		ca = besideDB
	}
	roots, err := loadPool(ca)
	if err != nil {
		fmt.Fprintln(os.Stderr, "audit verify: --ca:", err)
		return 2
	}
	if err := audit.VerifyAnchor(a, roots); err != nil {
		fmt.Printf("BROKEN at seq %d: %v\n", a.Seq, err)
		return 1
	}
	fmt.Printf("OK: %d rows verified (seq %d-%d) from the signed archive anchor at seq %d (archived %s, archive SHA-256 %s), head %x\n",
		res.Checked, res.From, res.To, a.Seq, a.ArchivedAt, a.ArchiveSHA256, res.HeadHash)
	printUnknown(res.Unknown)
	return 0
}

// printUnknown tells of forwarded MCP calls without their outcome row:
// information, not a broken chain.
func printUnknown(u audit.OutcomeUnknown) {
	if u.Count > 0 {
		fmt.Printf("outcome unknown: %d forwarded MCP calls have no mcp.call row (still at the upstream, or the outcome was lost in a crash); mcp.forward seqs %v\n",
			u.Count, u.Seqs)
	}
}

// verifyBundleFile verifies a bundle file, prints each check and returns
// the exit status.
func verifyBundleFile(path, ca, tsaCA string, witnesses []string) int {
	opts := audit.BundleOptions{Witnesses: map[int64]string{}}
	var err error
	if ca != "" {
		if opts.Roots, err = loadPool(ca); err != nil {
			fmt.Fprintln(os.Stderr, "audit verify: --ca:", err)
			return 2
		}
	}
	if tsaCA != "" {
		if opts.TSARoots, err = loadPool(tsaCA); err != nil {
			fmt.Fprintln(os.Stderr, "audit verify: --tsa-ca:", err)
			return 2
		}
	}
	for _, w := range witnesses {
		seq, hash, ok := strings.Cut(w, ":")
		n, err := strconv.ParseInt(seq, 10, 64)
		if !ok || err != nil || len(hash) != 64 {
			fmt.Fprintf(os.Stderr, "audit verify: --witness %q: want SEQ:HASH (the hash in hex)\n", w)
			return 2
		}
		opts.Witnesses[n] = strings.ToLower(hash)
	}
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "audit verify:", err)
		return 2
	}
	defer f.Close()
	res, err := audit.VerifyBundle(f, opts)
	for _, c := range res.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Printf("%s %-10s %s\n", mark, c.Name, c.Detail)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "audit verify:", err)
		return 2
	}
	if bad, failed := res.Failure(); failed {
		if bad.Seq > 0 {
			fmt.Printf("BROKEN at seq %d: %s\n", bad.Seq, bad.Detail)
		} else {
			fmt.Printf("BROKEN: %s\n", bad.Detail)
		}
		return 1
	}
	fmt.Println("OK: the bundle verifies")
	return 0
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
