package admincmd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/backup"
	"github.com/caddy-mastio/caddy-mastio/internal/adminclient"
)

func backupCommand() *cobra.Command {
	var out, passFile string
	var recipients []string
	c := &cobra.Command{
		Use:   "backup --out FILE (--recipient AGE_PUBKEY... | --passphrase-file FILE)",
		Short: "Take an encrypted backup of the running Mastio (database, Org CA, keys, config)",
		Long: `Asks the running Mastio (POST /v1/admin/backup) for a backup taken while it
serves: a consistent snapshot of the SQLite database (VACUUM INTO), every file
of the data directory (the Org CA and its keys, the signing keys, the admin
secret), the configuration, and a manifest of SHA-256 checksums, encrypted
with age. With Postgres the database is not in it: back it up with pg_dump
(the README shows how); the backup holds everything else, with the
key-encryption key.

The backup is encrypted to --recipient (age public keys, repeatable) or to a
passphrase read from --passphrase-file. Either way the Mastio encrypts it to
a key this command makes for the one request, and this command re-encrypts
it as it arrives, checking every checksum on the way: the backup is never
on the wire or on disk unencrypted, and FILE (new, mode 0600, fsynced)
appears only once it is whole and checked.

Restore it with: caddy mastio restore FILE --data-dir DIR`,
		Args: cobra.NoArgs,
	}
	c.Flags().StringVar(&out, "out", "", "the backup file to create (required; new, mode 0600)")
	c.Flags().StringArrayVar(&recipients, "recipient", nil, "an age public key (age1...) to encrypt to (repeatable)")
	c.Flags().StringVar(&passFile, "passphrase-file", "", "a file holding the passphrase to encrypt with (at least 12 characters)")
	return operatorCommand(c, func(cmd *cobra.Command, op *operator, cl *adminclient.Client, _ []string) error {
		if out == "" {
			return errors.New("--out is required")
		}
		final, err := backupRecipients(recipients, passFile)
		if err != nil {
			return err
		}
		man, err := takeBackup(cmd, cl, out, final)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "backup written to %s: org %s, Org CA sha256 %s, %s database at schema %d, audit head seq %d, %d files\n",
			out, man.OrgID, man.RootSHA256, man.Database, man.SchemaVersion, man.AuditLastSeq, len(man.Files))
		if man.Database == "postgres" {
			fmt.Fprintln(cmd.OutOrStdout(), "the database is Postgres: back it up with pg_dump now (see the README)")
		}
		return nil
	})
}

// backupRecipients reads what the backup file is encrypted to.
func backupRecipients(recipients []string, passFile string) ([]age.Recipient, error) {
	switch {
	case len(recipients) > 0 && passFile != "":
		return nil, errors.New("give --recipient or --passphrase-file, not both")
	case passFile != "":
		pass, err := os.ReadFile(passFile)
		if err != nil {
			return nil, fmt.Errorf("--passphrase-file: %w", err)
		}
		p := strings.TrimRight(string(pass), "\r\n")
		if len(p) < 12 {
			return nil, errors.New("--passphrase-file: the passphrase must have at least 12 characters")
		}
		r, err := age.NewScryptRecipient(p)
		if err != nil {
			return nil, err
		}
		return []age.Recipient{r}, nil
	case len(recipients) > 0:
		rs, err := age.ParseRecipients(strings.NewReader(strings.Join(recipients, "\n")))
		if err != nil {
			return nil, fmt.Errorf("--recipient: %w", err)
		}
		return rs, nil
	}
	return nil, errors.New("give --recipient AGE_PUBKEY or --passphrase-file FILE: a backup holds the Org CA keys and is always encrypted")
}

// takeBackup fetches a backup encrypted to a one-time key, re-encrypts it
// to final into a temporary file beside out while checking it, and
// renames it to out once whole.
func takeBackup(cmd *cobra.Command, cl *adminclient.Client, out string, final []age.Recipient) (*backup.Manifest, error) {
	if _, err := os.Stat(out); err == nil {
		return nil, fmt.Errorf("%s exists: give a new file", out)
	}
	once, err := age.GenerateX25519Identity()
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Chmod(0o600); err != nil {
		return nil, err
	}
	enc, err := age.Encrypt(tmp, final...)
	if err != nil {
		return nil, err
	}
	// The answer flows: HTTP body -> decrypt (one-time key) -> tee to the
	// re-encryption and to the checker.
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	var man *backup.Manifest
	go func() {
		var err error
		man, err = backup.Check(pr)
		pr.CloseWithError(err)
		checked <- err
	}()
	body, bw := io.Pipe()
	fetched := make(chan error, 1)
	go func() {
		_, err := cl.Download(cmd.Context(), "POST", "/v1/admin/backup", admin.BackupRequest{Recipients: []string{once.Recipient().String()}}, bw)
		bw.CloseWithError(err)
		fetched <- err
	}()
	plain, err := age.Decrypt(body, once)
	if err == nil {
		_, err = io.Copy(io.MultiWriter(enc, pw), plain)
	}
	pw.CloseWithError(err)
	body.CloseWithError(err)
	if ferr := <-fetched; ferr != nil {
		return nil, ferr
	}
	if err != nil {
		return nil, fmt.Errorf("reading the backup: %w", err)
	}
	if err := <-checked; err != nil {
		return nil, fmt.Errorf("the backup the Mastio sent does not check: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Link(tmp.Name(), out); err != nil { // fails if out appeared meanwhile
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	if d, err := os.Open(filepath.Dir(out)); err == nil {
		d.Sync()
		d.Close()
	}
	return man, nil
}
