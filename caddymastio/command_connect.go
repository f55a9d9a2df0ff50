package caddymastio

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/client"
)

func connectCommand() *cobra.Command {
	var dir, url, path, listen string
	var stdio bool
	c := &cobra.Command{
		Use:   "connect --dir <identity-dir> (--stdio | --listen 127.0.0.1:<port>) [--path /v1/mcp]",
		Short: "Connect a stock MCP client to the Mastio with this agent's identity",
		Long: `Relays an MCP client that knows neither mTLS nor DPoP to the Mastio, adding the
agent's certificate and DPoP-bound tokens (renewed as they expire). The
identity directory is the one caddy mastio enroll wrote.

--stdio: the client launches this command as its MCP server and speaks
JSON-RPC on stdin and stdout (desktop MCP clients do this), for example:

  {"command": "caddy", "args": ["mastio", "connect", "--stdio", "--dir", "/home/ada/identity"]}

--listen: Streamable HTTP on a loopback address; the URL to give the client
(with a random path, so that other local processes cannot use it) is
printed on startup.

--path chooses the endpoint at the Mastio: /v1/mcp (the aggregator of every
MCP server, the default) or a gateway route such as /mcp/github.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if stdio == (listen != "") {
				return errors.New("give --stdio or --listen <address>, one of them")
			}
			id, err := client.LoadIdentity(dir)
			if err != nil {
				return err
			}
			if url == "" {
				url = id.URL
			}
			if url == "" {
				return errors.New("no --url, and the identity directory names no Mastio")
			}
			s, err := id.NewSession(url, nil)
			if err != nil {
				return err
			}
			logger := log.New(os.Stderr, "caddy mastio connect: ", 0) // stdout is the client's, in --stdio
			b := &client.Bridge{Session: s, Target: strings.TrimSuffix(url, "/") + path, Logf: logger.Printf}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			if stdio {
				return b.ServeStdio(ctx, os.Stdin, os.Stdout)
			}
			return serveBridge(ctx, b, listen, logger)
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "identity directory written by enroll (required)")
	c.Flags().StringVar(&url, "url", "", "base URL of the Mastio (default: the one enrolled with)")
	c.Flags().StringVar(&path, "path", "/v1/mcp", "MCP endpoint at the Mastio: the aggregator, or a gateway route")
	c.Flags().BoolVar(&stdio, "stdio", false, "serve the MCP client on stdin and stdout")
	c.Flags().StringVar(&listen, "listen", "", "serve the MCP client over Streamable HTTP on this loopback address")
	c.MarkFlagRequired("dir")
	return c
}

// serveBridge serves b over HTTP on a loopback address until ctx ends.
func serveBridge(ctx context.Context, b *client.Bridge, addr string, logger *log.Logger) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("--listen %q: the bridge uses the agent's credentials for whoever reaches it: listen on a loopback address", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	path := client.NewPath()
	srv := &http.Server{Handler: b.Handler(l.Addr().String(), path), ReadHeaderTimeout: 10 * time.Second}
	fmt.Printf("http://%s%s\n", l.Addr(), path)
	logger.Printf("relaying to %s; give the MCP client the URL above", b.Target)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
