package caddymastio

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "mastio",
		Short: "Agent and operator tools of caddy-mastio",
		Long: `Agent side:
  caddy mastio enroll --url https://mastio.example.com:9443 --dir ./identity --ca org-ca.crt --name "..." --email ...
  caddy mastio token  --dir ./identity [--request GET https://mastio.example.com:9443/path]
  caddy mastio connect --dir ./identity (--stdio | --listen 127.0.0.1:8765) [--path /v1/mcp]

Operator side (the admin API at $MASTIO_URL, default https://localhost:9443,
with $MASTIO_ADMIN_SECRET or ./data/admin-secret; --json for the raw answer):
  caddy mastio agents list|show ID|revoke ID [--reason R]|rotate ID --out DIR
  caddy mastio enrollments list|approve SID --agent-id NAME [--capability C]|reject SID [--reason R]
  caddy mastio keys rotate [--grace 24h]
  caddy mastio policy get|put FILE|check --agent ID --server S --name N
  caddy mastio audit archive --before 90d --out FILE
  caddy mastio audit verify BUNDLE [--ca org-ca.crt]
  caddy mastio audit verify --db ./data/mastio.db
  caddy mastio audit export --db ./data/mastio.db [--format csv] [--event-type T] [--after-seq N] ...
  caddy mastio backup --out FILE (--recipient age1... | --passphrase-file FILE)
  caddy mastio restore FILE --data-dir DIR (--identity FILE | --passphrase-file FILE) [--force]
  caddy mastio migrate --check [--data-dir ./data]
  caddy mastio init-database --data-dir ./data`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(enrollCommand(), tokenCommand(), connectCommand(), auditCommand(), initDatabaseCommand(),
				restoreCommand(), migrateCommand())
			for _, c := range subcommands {
				cmd.AddCommand(c())
			}
		},
	})
}

// subcommands are the caddy mastio subcommands other packages add (the
// operator CLI of package admin/admincmd).
var subcommands []func() *cobra.Command

// RegisterCommand adds caddy mastio subcommands; call it from an init
// function, as package admin/admincmd does.
func RegisterCommand(cmds ...func() *cobra.Command) { subcommands = append(subcommands, cmds...) }

func enrollCommand() *cobra.Command {
	var url, dir, ca, name, email, reason string
	var timeout time.Duration
	c := &cobra.Command{
		Use:   "enroll --url <mastio> --dir <identity-dir> --ca <org-ca.crt> --name <requester> --email <address>",
		Short: "Enroll this agent: ask for a certificate, wait for an administrator's approval",
		Long: `Creates the agent key and DPoP key in --dir (0600), starts an enrollment at the
Mastio and prints the session to approve, then waits for the decision and
writes the certificate chain, the Org CA and metadata.json into --dir.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := loadPool(ca)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			p, err := client.StartEnrollment(ctx, client.EnrollOptions{URL: url, Dir: dir, RootCAs: pool,
				Requester: client.Requester{Name: name, Email: email, Reason: reason}})
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "enrollment session %s is waiting for approval (until %s)\n  approve: %s\n",
				p.SessionID, p.ExpiresAt.Local().Format(time.RFC1123), p.EnrollURL)
			id, err := p.Wait(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "enrolled as %s; identity written to %s\n", id.AgentID, dir)
			fmt.Println(id.AgentID)
			return nil
		},
	}
	c.Flags().StringVar(&url, "url", "", "base URL of the Mastio (required)")
	c.Flags().StringVar(&dir, "dir", "", "identity directory to create (required)")
	c.Flags().StringVar(&ca, "ca", "", "PEM file with the Org CA to trust (default: system roots)")
	c.Flags().StringVar(&name, "name", "", "requester name shown to the approver (required)")
	c.Flags().StringVar(&email, "email", "", "requester e-mail shown to the approver (required)")
	c.Flags().StringVar(&reason, "reason", "", "why this agent needs access")
	c.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long to wait for a decision")
	for _, f := range []string{"url", "dir", "name", "email"} {
		c.MarkFlagRequired(f)
	}
	return c
}

func tokenCommand() *cobra.Command {
	var dir, url, method string
	c := &cobra.Command{
		Use:   "token --dir <identity-dir> [--request <METHOD> <URL>]",
		Short: "Mint an access token; with --request, print the headers for that request",
		Long: `Mints a DPoP-bound access token with the identity in --dir (over mTLS, so the
token is also bound to the agent certificate). Prints the token, or with
--request METHOD URL the two headers that request needs, ready for curl:

  caddy mastio token --dir ./identity --request GET https://localhost:9443/whoami | \
    curl -H @- --cacert ./identity/ca.crt --cert ./identity/agent.crt --key ./identity/agent.key \
    https://localhost:9443/whoami

(--request GET,https://... works too.) A DPoP proof is single-use: print
new headers for every request.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var target string
			if m, u, ok := strings.Cut(method, ","); ok {
				method, target = m, u
			}
			if len(args) == 1 {
				if method == "" || target != "" {
					return fmt.Errorf("unexpected argument %q: the URL follows --request METHOD", args[0])
				}
				target = args[0]
			}
			if method != "" && target == "" {
				return errors.New("--request takes a method and a URL: --request GET https://host/path")
			}
			id, err := client.LoadIdentity(dir)
			if err != nil {
				return err
			}
			if url == "" {
				url = id.URL
			}
			s, err := id.NewSession(url, nil)
			if err != nil {
				return err
			}
			tok, err := s.Token(cmd.Context())
			if err != nil {
				return err
			}
			if method == "" {
				fmt.Println(tok)
				return nil
			}
			proof, err := s.Proof(strings.ToUpper(method), target, tok)
			if err != nil {
				return err
			}
			fmt.Printf("Authorization: DPoP %s\nDPoP: %s\n", tok, proof)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "identity directory written by enroll (required)")
	c.Flags().StringVar(&url, "url", "", "base URL of the Mastio (default: the one enrolled with)")
	c.Flags().StringVar(&method, "request", "", "the METHOD of the request to sign a DPoP proof for, followed by its URL")
	c.MarkFlagRequired("dir")
	return c
}

func initDatabaseCommand() *cobra.Command {
	var dataDir, db string
	c := &cobra.Command{
		Use:   "init-database --data-dir <dir> [--database <file>|postgres://...]",
		Short: "Start over with an empty database that keeps the existing Org CA",
		Long: `When the database is lost and no backup can be restored, the gateway refuses
to start beside the Org CA that remains (a silent new database would orphan
every agent). This creates the empty database explicitly, for that Org CA
and its org id: every agent must enroll again, and a new audit chain begins
with a system.database_created row. Run it while Caddy is stopped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if db == "" {
				db = filepath.Join(dataDir, "mastio.db")
			}
			org, err := mastio.InitDatabase(cmd.Context(), dataDir, mastio.Database(db))
			if err != nil {
				return err
			}
			fmt.Printf("created %s for the Org CA of org %s: start Caddy, then enroll every agent again\n", mastio.Database(db).Location(), org)
			return nil
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", DefaultDataDir, "the data directory holding the Org CA")
	c.Flags().StringVar(&db, "database", "", "the database file (default: <data-dir>/mastio.db)")
	return c
}

func loadPool(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}
