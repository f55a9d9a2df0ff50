// Package admincmd is the operator CLI: caddy mastio agents, enrollments,
// keys and policy, talking to a running gateway's admin API. It adds
// itself to the caddy mastio command when linked in (the root package of
// this module imports it), so that the Caddy modules do not depend on
// package admin.
package admincmd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/caddymastio"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/registry"
	"github.com/caddy-mastio/caddy-mastio/caddymastio/token"
	"github.com/caddy-mastio/caddy-mastio/internal/adminclient"
)

// operator is what every operator command shares: where the admin API is
// and how to print.
type operator struct {
	opts    adminclient.Options
	jsonOut bool
}

// operatorCommand makes c an operator command: the admin API's flags, and
// run called with a client.
func operatorCommand(c *cobra.Command, run func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error) *cobra.Command {
	op := &operator{}
	c.Flags().StringVar(&op.opts.URL, "url", "", "base URL of the Mastio (default $MASTIO_URL, else https://localhost:9443)")
	c.Flags().StringVar(&op.opts.CAFile, "ca", "", "the Org CA (PEM) to trust (default <data-dir>/pki/org-ca.crt)")
	c.Flags().StringVar(&op.opts.SecretFile, "admin-secret-file", "", "file holding the admin secret (default $MASTIO_ADMIN_SECRET, else <data-dir>/admin-secret)")
	c.Flags().StringVar(&op.opts.DataDir, "data-dir", caddymastio.DefaultDataDir, "the local data directory the defaults are read from")
	c.Flags().BoolVar(&op.jsonOut, "json", false, "print the admin API's JSON answer")
	c.RunE = func(cmd *cobra.Command, args []string) error {
		cl, err := adminclient.New(op.opts)
		if err != nil {
			return err
		}
		return run(cmd, op, cl, args)
	}
	return c
}

// call sends the request, decodes the answer into v and, with --json,
// prints it as the API sent it (printed: the caller prints nothing more).
func (op *operator) call(cmd *cobra.Command, cl *adminclient.Client, method, path string, body, v any) (printed bool, err error) {
	var raw json.RawMessage
	if err := cl.Call(cmd.Context(), method, path, body, &raw); err != nil {
		return false, err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return false, fmt.Errorf("reading the answer to %s %s: %w", method, path, err)
	}
	if op.jsonOut {
		var b bytes.Buffer
		json.Indent(&b, raw, "", "  ")
		fmt.Fprintln(cmd.OutOrStdout(), b.String())
	}
	return op.jsonOut, nil
}

func table(w io.Writer, header string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func when(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04Z")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func init() {
	caddymastio.RegisterCommand(agentsCommand, enrollmentsCommand, keysCommand, policyCommand, backupCommand)
}

func agentPath(id string) string { return "/v1/admin/agents/" + url.PathEscape(id) }

func agentsCommand() *cobra.Command {
	c := &cobra.Command{Use: "agents", Short: "List, show, revoke and rotate agents (through the admin API)"}
	var status string
	list := operatorCommand(&cobra.Command{Use: "list [--status active|revoked]", Short: "List agents", Args: cobra.NoArgs},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, _ []string) error {
			var out admin.AgentList
			path := "/v1/admin/agents"
			if status != "" {
				path += "?status=" + url.QueryEscape(status)
			}
			if printed, err := op.call(cmd, cl, "GET", path, nil, &out); printed || err != nil {
				return err
			}
			var rows [][]string
			for _, a := range out.Agents {
				rows = append(rows, []string{a.AgentID, a.Status, orDash(strings.Join(a.Capabilities, ",")), orDash(strings.Join(a.Groups, ",")),
					when(&a.CreatedAt), certExpiry(a)})
			}
			if len(rows) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no agents")
				return nil
			}
			table(cmd.OutOrStdout(), "AGENT\tSTATUS\tCAPABILITIES\tGROUPS\tCREATED\tCERT EXPIRES", rows)
			return nil
		})
	list.Flags().StringVar(&status, "status", "", "only agents with this status")

	show := operatorCommand(&cobra.Command{Use: "show AGENT_ID", Short: "Show one agent and its certificates", Args: cobra.ExactArgs(1)},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error {
			var a registry.Agent
			if printed, err := op.call(cmd, cl, "GET", agentPath(args[0]), nil, &a); printed || err != nil {
				return err
			}
			table(cmd.OutOrStdout(), "FIELD\tVALUE", [][]string{
				{"agent", a.AgentID}, {"spiffe id", a.SPIFFEID}, {"status", a.Status},
				{"capabilities", orDash(strings.Join(a.Capabilities, ","))}, {"groups", orDash(strings.Join(a.Groups, ","))},
				{"enrolled by", orDash(a.EnrollmentMethod)}, {"dpop key", orDash(a.DPoPJKT)}, {"created", when(&a.CreatedAt)},
				{"revoked", when(a.RevokedAt)}, {"revoked for", orDash(a.RevokedReason)}})
			var rows [][]string
			for _, c := range a.Certificates {
				rows = append(rows, []string{c.SHA256[:16] + "…", c.Status, when(&c.NotBefore), when(&c.NotAfter), when(c.GraceUntil)})
			}
			if len(rows) > 0 {
				fmt.Fprintln(cmd.OutOrStdout())
				table(cmd.OutOrStdout(), "CERT SHA-256\tSTATUS\tFROM\tUNTIL\tGRACE UNTIL", rows)
			}
			return nil
		})

	var reason string
	revoke := operatorCommand(&cobra.Command{Use: "revoke AGENT_ID [--reason TEXT]", Short: "Revoke an agent: its certificates and tokens stop working at once",
		Args: cobra.ExactArgs(1)},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error {
			var out admin.Revoked
			if printed, err := op.call(cmd, cl, "POST", agentPath(args[0])+"/revoke", admin.RevokeRequest{Reason: reason}, &out); printed || err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s at %s\n", out.AgentID, when(out.RevokedAt))
			return nil
		})
	revoke.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")

	var dir string
	var grace time.Duration
	rotate := operatorCommand(&cobra.Command{Use: "rotate AGENT_ID --out DIR [--grace 1h]",
		Short: "Issue an agent a new certificate for a key made here (DIR/agent.key, 0600, and DIR/agent.crt)",
		Long: `Makes a new EC P-256 key on this machine, has the Mastio issue a certificate
for it, and writes DIR/agent.key (0600) and DIR/agent.crt: the private key
never crosses the network. The old certificate keeps working for --grace
(default none). A revoked agent is reactivated; its old certificates stay dead.`,
		Args: cobra.ExactArgs(1)},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error {
			if dir == "" {
				return errors.New("--out is required")
			}
			pubPEM, keyPEM, err := newAgentKey()
			if err != nil {
				return err
			}
			keyFile, certFile := filepath.Join(dir, "agent.key"), filepath.Join(dir, "agent.crt")
			if _, err := os.Lstat(certFile); err == nil {
				return fmt.Errorf("%s exists; choose a new directory", certFile)
			}
			// The key is on disk before the Mastio issues anything for it.
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			if err := writeNew(keyFile, keyPEM, 0o600); err != nil {
				return err
			}
			req := admin.RotateCertRequest{GraceSeconds: int64(grace / time.Second), KeyInput: admin.KeyInput{PublicKeyPEM: pubPEM}}
			var out admin.Issued
			printed, err := op.call(cmd, cl, "POST", agentPath(args[0])+"/rotate-cert", req, &out)
			if err != nil {
				os.Remove(keyFile)
				return err
			}
			if err := writeNew(certFile, []byte(out.CertPEM), 0o644); err != nil {
				return fmt.Errorf("the certificate %s was issued but could not be written (%w): rotate again", out.CertSHA256, err)
			}
			if !printed {
				fmt.Fprintf(cmd.OutOrStdout(), "issued %s a certificate until %s (SHA-256 %s): %s, %s\n", out.AgentID, when(&out.NotAfter),
					out.CertSHA256, certFile, keyFile)
			}
			return nil
		})
	rotate.Flags().StringVar(&dir, "out", "", "directory to write agent.key and agent.crt to (required)")
	rotate.Flags().DurationVar(&grace, "grace", 0, "how long the old certificate keeps working")
	c.AddCommand(list, show, revoke, rotate)
	return c
}

// writeNew writes a file that must not exist yet, synced.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// certExpiry is when the agent's newest active certificate expires.
func certExpiry(a *registry.Agent) string {
	for _, c := range a.Certificates {
		if c.Status == "active" {
			return when(&c.NotAfter)
		}
	}
	return "-"
}

// newAgentKey makes an EC P-256 agent key: its public key and private
// key in PEM.
func newAgentKey() (string, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return "", nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", nil, err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub})),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func keysCommand() *cobra.Command {
	var grace time.Duration
	rotate := operatorCommand(&cobra.Command{Use: "rotate [--grace 24h]",
		Short: "Rotate the access-token signing key; tokens signed by the old one keep verifying for --grace", Args: cobra.NoArgs},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, _ []string) error {
			var out token.Rotation
			if printed, err := op.call(cmd, cl, "POST", "/v1/admin/keys/rotate", admin.RotateSigningKeyRequest{GraceSeconds: int64(grace / time.Second)}, &out); printed || err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "signing key %s is active; %s verifies until %s\n", out.NewKid, out.OldKid, when(&out.GraceEnds))
			return nil
		})
	rotate.Flags().DurationVar(&grace, "grace", 0, "how long the old key keeps verifying (default 24h)")
	c := &cobra.Command{Use: "keys", Short: "The access-token signing key (through the admin API)"}
	c.AddCommand(rotate)
	return c
}
