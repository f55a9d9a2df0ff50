package admincmd

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/admin"
	"github.com/caddy-mastio/caddy-mastio/internal/adminclient"
)

func enrollmentsCommand() *cobra.Command {
	c := &cobra.Command{Use: "enrollments", Short: "List, approve and reject enrollment requests (through the admin API)"}
	var status string
	list := operatorCommand(&cobra.Command{Use: "list [--status pending|approved|rejected|expired]", Short: "List enrollment sessions", Args: cobra.NoArgs},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, _ []string) error {
			var out admin.EnrollmentList
			path := "/v1/admin/enrollments"
			if status != "" {
				path += "?status=" + url.QueryEscape(status)
			}
			if printed, err := op.call(cmd, cl, "GET", path, nil, &out); printed || err != nil {
				return err
			}
			if len(out.Enrollments) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no enrollment sessions")
				return nil
			}
			var rows [][]string
			for _, e := range out.Enrollments {
				rows = append(rows, []string{e.SessionID, e.Status, e.RequesterName, e.RequesterEmail, orDash(e.Reason), when(&e.CreatedAt),
					when(&e.ExpiresAt), orDash(e.AgentID)})
			}
			table(cmd.OutOrStdout(), "SESSION\tSTATUS\tREQUESTER\tEMAIL\tREASON\tREQUESTED\tEXPIRES\tAGENT", rows)
			return nil
		})
	list.Flags().StringVar(&status, "status", "", "only sessions with this status")

	var agentID string
	var caps, groups []string
	approve := operatorCommand(&cobra.Command{Use: "approve SESSION_ID --agent-id NAME [--capability C]... [--group G]...",
		Short: "Approve an enrollment: the agent is created and its certificate issued", Args: cobra.ExactArgs(1)},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error {
			if agentID == "" {
				return errors.New("--agent-id is required")
			}
			var out admin.Approved
			req := admin.ApproveRequest{AgentID: agentID, Capabilities: caps, Groups: groups}
			if printed, err := op.call(cmd, cl, "POST", "/v1/admin/enrollments/"+url.PathEscape(args[0])+"/approve", req, &out); printed || err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "approved %s: agent %s\n", out.SessionID, out.AgentID)
			return nil
		})
	approve.Flags().StringVar(&agentID, "agent-id", "", "the agent's name (required)")
	approve.Flags().StringArrayVar(&caps, "capability", nil, "a capability to grant (repeatable)")
	approve.Flags().StringArrayVar(&groups, "group", nil, "a group to put the agent in (repeatable)")

	var reason string
	reject := operatorCommand(&cobra.Command{Use: "reject SESSION_ID [--reason TEXT]", Short: "Reject an enrollment", Args: cobra.ExactArgs(1)},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error {
			var out admin.Rejected
			if printed, err := op.call(cmd, cl, "POST", "/v1/admin/enrollments/"+url.PathEscape(args[0])+"/reject", admin.RejectRequest{Reason: reason}, &out); printed || err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rejected %s\n", out.SessionID)
			return nil
		})
	reject.Flags().StringVar(&reason, "reason", "", "the reason the requester will see")
	c.AddCommand(list, approve, reject)
	return c
}

func policyCommand() *cobra.Command {
	c := &cobra.Command{Use: "policy", Short: "The MCP policy: show, replace the stored rules, dry run (through the admin API)"}
	get := operatorCommand(&cobra.Command{Use: "get", Short: "Print the rules in force: the configuration's, then the stored ones", Args: cobra.NoArgs},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, _ []string) error {
			var out admin.Policies
			if printed, err := op.call(cmd, cl, "GET", "/v1/admin/policies", nil, &out); printed || err != nil {
				return err
			}
			var rows [][]string
			for _, r := range out.Rules {
				rows = append(rows, []string{r.ID, r.Effect, r.Principal, r.Action, r.Resource, r.Comment})
			}
			if len(rows) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no rules: every MCP call is denied")
				return nil
			}
			table(cmd.OutOrStdout(), "RULE\tEFFECT\tPRINCIPAL\tACTION\tRESOURCE\tCOMMENT", rows)
			return nil
		})
	put := operatorCommand(&cobra.Command{Use: "put FILE|-",
		Short: "Replace the stored rules with those of FILE (- for standard input), validated first", Args: cobra.ExactArgs(1)},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, args []string) error {
			var text []byte
			var err error
			if args[0] == "-" {
				text, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), admin.MaxBodyBytes+1))
			} else {
				text, err = os.ReadFile(args[0])
			}
			if err != nil {
				return err
			}
			var out admin.RuleSet
			if printed, err := op.call(cmd, cl, "PUT", "/v1/admin/policies", map[string]string{"rules": string(text)}, &out); printed || err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored %d rules; in force now\n", out.Count)
			return nil
		})
	var agent, action, server, name string
	check := operatorCommand(&cobra.Command{Use: "check --agent ID --server S --name N [--action tools/call]",
		Short: "Dry run: may the agent make this call? Prints the deciding rule", Args: cobra.NoArgs},
		func(cmd *cobra.Command, op *operator, cl *adminclient.Client, _ []string) error {
			var out admin.PolicyCheck
			req := admin.PolicyCheckRequest{AgentID: agent, Action: action, Server: server, Name: name}
			if printed, err := op.call(cmd, cl, "POST", "/v1/admin/policies/check", req, &out); printed || err != nil {
				return err
			}
			verdict := "DENIED"
			if out.Allowed {
				verdict = "ALLOWED"
			}
			rule := "no rule matched"
			if out.Rule != nil {
				rule = "rule " + out.Rule.ID + ": " + strings.TrimSpace(out.Rule.String())
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s %s for %s (%s; %s)\n", verdict, out.Action, out.Resource, out.AgentID, rule, out.Reason)
			return nil
		})
	check.Flags().StringVar(&agent, "agent", "", "the agent id")
	check.Flags().StringVar(&action, "action", "", "tools/call (default), resources/read or prompts/get")
	check.Flags().StringVar(&server, "server", "", "the MCP server")
	check.Flags().StringVar(&name, "name", "", "the tool, resource or prompt")
	c.AddCommand(get, put, check)
	return c
}
