package caddymastio

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

func restoreCommand() *cobra.Command {
	var dataDir, db, identityFile, passFile string
	var force bool
	c := &cobra.Command{
		Use:   "restore FILE --data-dir DIR (--identity FILE | --passphrase-file FILE) [--database FILE] [--force]",
		Short: "Restore a backup (caddy mastio backup) into a data directory",
		Long: `Decrypts FILE with the age identity in --identity or the passphrase in
--passphrase-file and checks it whole before anything is put in place: every
checksum against the manifest, the schema (a backup from a newer release is
refused), the Org CA (the one its database was made with) and the audit
chain (up to the head the manifest names, from a signed archive anchor if
there is one). Then it writes the data directory, the database (default
<data-dir>/mastio.db) and, under <data-dir>/restored-config, the
configuration the backup held.

A data directory in use by a running Mastio is refused. One that is not
empty is refused too unless --force, which moves it aside to
DIR.replaced-<time> (never deleting it) and restores in its place.

With a Postgres deployment the backup holds the data directory and the
key-encryption key (restored-config/key-encryption-key): restore the
database with pg_restore from the pg_dump taken with the backup.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := restoreIdentities(identityFile, passFile)
			if err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			res, err := mastio.Restore(cmd.Context(), mastio.RestoreOptions{Archive: f, Identities: ids, DataDir: dataDir, Database: db, Force: force})
			if err != nil {
				return err
			}
			m := res.Manifest
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restored the backup of %s (caddy-mastio %s) into %s\n", m.CreatedAt.Format("2006-01-02T15:04:05Z"), m.Version, dataDir)
			fmt.Fprintf(out, "  org %s, Org CA sha256 %s\n", m.OrgID, m.RootSHA256)
			if m.Database == "sqlite" {
				fmt.Fprintf(out, "  database schema %d; audit chain OK: %d rows verified (seq %d-%d), head %x\n",
					m.SchemaVersion, res.Verified.Checked, res.Verified.From, res.Verified.To, res.Verified.HeadHash)
			} else {
				fmt.Fprintf(out, "  the database is Postgres (schema %d, audit head seq %d %s): restore it with pg_restore\n",
					m.SchemaVersion, m.AuditLastSeq, m.AuditLastHash)
			}
			for _, r := range res.Replaced {
				fmt.Fprintf(out, "  what was there is kept at %s\n", r)
			}
			if res.ConfigDir != "" {
				fmt.Fprintf(out, "  the backup's configuration is in %s\n", res.ConfigDir)
			}
			return nil
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "", "the data directory to restore into (required)")
	c.Flags().StringVar(&db, "database", "", "where the database goes (default: <data-dir>/mastio.db)")
	c.Flags().StringVar(&identityFile, "identity", "", "a file of age identities (AGE-SECRET-KEY-...) the backup was encrypted to")
	c.Flags().StringVar(&passFile, "passphrase-file", "", "a file holding the backup's passphrase")
	c.Flags().BoolVar(&force, "force", false, "move a non-empty data directory (or database file) aside and restore in its place")
	c.MarkFlagRequired("data-dir")
	return c
}

// restoreIdentities reads what decrypts a backup.
func restoreIdentities(identityFile, passFile string) ([]age.Identity, error) {
	switch {
	case identityFile != "" && passFile != "":
		return nil, errors.New("give --identity or --passphrase-file, not both")
	case identityFile != "":
		f, err := os.Open(identityFile)
		if err != nil {
			return nil, fmt.Errorf("--identity: %w", err)
		}
		defer f.Close()
		ids, err := age.ParseIdentities(f)
		if err != nil {
			return nil, fmt.Errorf("--identity %s: %w", identityFile, err)
		}
		return ids, nil
	case passFile != "":
		pass, err := os.ReadFile(passFile)
		if err != nil {
			return nil, fmt.Errorf("--passphrase-file: %w", err)
		}
		id, err := age.NewScryptIdentity(strings.TrimRight(string(pass), "\r\n"))
		if err != nil {
			return nil, err
		}
		return []age.Identity{id}, nil
	}
	return nil, errors.New("give --identity FILE or --passphrase-file FILE: the backup is encrypted")
}

func migrateCommand() *cobra.Command {
	var dataDir, db string
	var check, jsonOut bool
	c := &cobra.Command{
		Use:   "migrate [--check] [--data-dir DIR] [--database FILE|postgres://...] [--json]",
		Short: "Say what this binary would do to the database's schema, or do it",
		Long: `Migrations are forward-only and run when the Mastio starts. With --check this
reads the database, changes nothing and prints its schema version, this
binary's, and the steps a start would apply; exit status 0 when it can be
opened (up to date or upgradable), 1 when a newer release wrote it (this
binary would refuse it: restore the backup taken before that upgrade, or run
that release). Without --check it applies the steps now, for an upgrade done
while Caddy is stopped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if db == "" {
				db = filepath.Join(dataDir, "mastio.db")
			}
			d := mastio.Database(db)
			var plan mastio.MigrationPlan
			var err error
			if check {
				plan, err = d.Plan(cmd.Context())
			} else {
				if inUse, release, err := backup.InUse(dataDir); err == nil && inUse {
					return fmt.Errorf("%s is in use by a running Mastio: stop Caddy first (or just start the new binary: a start migrates)", dataDir)
				} else if release != nil {
					defer release()
				}
				plan, err = d.Migrate(cmd.Context())
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if jsonOut {
				b, _ := json.MarshalIndent(plan, "", "  ")
				fmt.Fprintln(out, string(b))
			} else {
				printPlan(out, plan, check)
			}
			if plan.TooNew {
				os.Exit(1)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&check, "check", false, "change nothing: print what a start would do")
	c.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "the data directory")
	c.Flags().StringVar(&db, "database", "", "the database: a file (default <data-dir>/mastio.db) or a postgres:// URL")
	c.Flags().BoolVar(&jsonOut, "json", false, "print the plan as JSON")
	return c
}

func printPlan(out interface{ Write([]byte) (int, error) }, p mastio.MigrationPlan, check bool) {
	switch {
	case p.TooNew:
		fmt.Fprintf(out, "%s is at schema version %d, newer than this binary's %d: it would refuse to start on it. "+
			"Run the release that wrote it, or restore the backup taken before the upgrade.\n", p.Database, p.Current, p.Latest)
	case !p.Exists:
		fmt.Fprintf(out, "%s does not exist yet: a start creates it at schema version %d\n", p.Database, p.Latest)
	case len(p.Pending) == 0:
		fmt.Fprintf(out, "%s is at schema version %d, this binary's: nothing to do\n", p.Database, p.Current)
	default:
		verb := "a start would apply"
		if !check {
			verb = "applied"
		}
		fmt.Fprintf(out, "%s is at schema version %d, this binary knows %d; %s, in one transaction:\n", p.Database, p.Current, p.Latest, verb)
		for _, m := range p.Pending {
			fmt.Fprintf(out, "  %d  %s\n", m.Version, m.Name)
		}
		if check {
			fmt.Fprintln(out, "Take a backup first (caddy mastio backup): the steps are forward-only, rollback is a restore.")
		}
	}
}
