package caddymastio

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/audit"
	"github.com/caddy-mastio/caddy-mastio/internal/adminclient"
)

func auditArchiveCommand() *cobra.Command {
	var before, out string
	var opts adminclient.Options
	c := &cobra.Command{
		Use:   "archive --before DATE --out FILE [--url URL] [--ca FILE] [--admin-secret-file FILE] [--data-dir DIR]",
		Short: "Move the audit rows before a date into a verified bundle and out of the database",
		Long: `Frees the database of old audit rows (runbook §2, disk full) without breaking
the chain. Asks the running Mastio for a bundle of every row before DATE
(RFC 3339, YYYY-MM-DD for midnight UTC, or Nd for N days ago), writes it to
FILE (new, mode 0600, fsynced), verifies it as 'caddy mastio audit verify'
would, and only then asks the Mastio to remove those rows. In one
transaction the Mastio keeps a signed anchor (the last archived row's seq
and hash, signed by its audit signer), removes the rows and records
audit.archived with the file's SHA-256. The rows that stay verify from
the anchor; FILE verifies on its own. When anything fails before the
removal, nothing is removed.

The Mastio is found at --url ($MASTIO_URL, default https://localhost:9443),
trusted with --ca (default <data-dir>/pki/org-ca.crt), which the bundle's
signature must also chain to; the admin secret is $MASTIO_ADMIN_SECRET, or
read from --admin-secret-file (default <data-dir>/admin-secret).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cutoff, err := parseBefore(before, time.Now())
			if err != nil {
				return fmt.Errorf("--before: %w", err)
			}
			if out == "" {
				return errors.New("--out is required")
			}
			cl, err := adminclient.New(opts)
			if err != nil {
				return err
			}
			return archiveAudit(cmd.Context(), cl, cutoff, out, cmd.OutOrStdout())
		},
	}
	c.Flags().StringVar(&before, "before", "", "archive the rows older than this: RFC 3339, YYYY-MM-DD or Nd (required)")
	c.Flags().StringVar(&out, "out", "", "the bundle file to create (required)")
	c.Flags().StringVar(&opts.URL, "url", "", "base URL of the Mastio (default $MASTIO_URL, else https://localhost:9443)")
	c.Flags().StringVar(&opts.CAFile, "ca", "", "the Org CA (PEM) (default <data-dir>/pki/org-ca.crt)")
	c.Flags().StringVar(&opts.SecretFile, "admin-secret-file", "", "file holding the admin secret (default $MASTIO_ADMIN_SECRET, else <data-dir>/admin-secret)")
	c.Flags().StringVar(&opts.DataDir, "data-dir", DefaultDataDir, "the local data directory the defaults are read from")
	return c
}

// parseBefore reads --before: a time, a date (midnight UTC) or Nd.
func parseBefore(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, errors.New("required")
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.UTC().AddDate(0, 0, -n), nil
		}
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time, a YYYY-MM-DD date or Nd", s)
}

// archiveAudit is the archive: bundle to a new file, verify it, then have
// the rows removed.
func archiveAudit(ctx context.Context, cl *adminclient.Client, before time.Time, out string, stdout io.Writer) error {
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("%s exists; choose a new file", out)
	}
	partial := out + ".partial"
	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.Remove(partial)
		}
	}()
	digest := sha256.New()
	_, err = cl.Download(ctx, "POST", "/v1/admin/audit/bundle", map[string]any{"end": before}, io.MultiWriter(f, digest))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if adminclient.Code(err) == "no_rows" {
		fmt.Fprintf(stdout, "nothing to archive: no audit rows before %s\n", before.Format(time.RFC3339))
		return nil
	}
	if err != nil {
		return fmt.Errorf("fetching the bundle (nothing was removed): %w", err)
	}

	f, err = os.Open(partial)
	if err != nil {
		return err
	}
	res, err := audit.VerifyBundle(f, audit.BundleOptions{Roots: cl.Roots()})
	f.Close()
	for _, c := range res.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(stdout, "%s %-10s %s\n", mark, c.Name, c.Detail)
	}
	if err != nil {
		return fmt.Errorf("the bundle cannot be read (nothing was removed): %w", err)
	}
	if bad, failed := res.Failure(); failed || res.Manifest == nil {
		return fmt.Errorf("the bundle does not verify (nothing was removed): %s: %s", bad.Name, bad.Detail)
	}
	if err := os.Rename(partial, out); err != nil {
		return err
	}
	done = true
	if err := syncDir(filepath.Dir(out)); err != nil {
		return err
	}

	m := res.Manifest
	sum := hex.EncodeToString(digest.Sum(nil))
	var archived struct {
		FirstSeq   int64 `json:"first_seq"`
		ThroughSeq int64 `json:"through_seq"`
		Removed    int64 `json:"removed"`
		Seq        int64 `json:"seq"`
	}
	err = cl.Call(ctx, "POST", "/v1/admin/audit/archive",
		map[string]any{"through_seq": m.LastSeq, "through_hash": m.LastHash, "archive_sha256": sum}, &archived)
	if err != nil {
		return fmt.Errorf("%s is written and verified, but the rows were not removed: %w", out, err)
	}
	fmt.Fprintf(stdout, "archived seq %d-%d (%d rows) to %s (SHA-256 %s); the chain now starts from the signed anchor at seq %d; recorded as audit.archived at seq %d\n",
		archived.FirstSeq, archived.ThroughSeq, archived.Removed, out, sum, archived.ThroughSeq, archived.Seq)
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
