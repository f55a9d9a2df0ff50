package gateway

import (
	"context"
	"encoding/json"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mcp"
)

// The handlers of an agent server: each forwards one use of an upstream
// item under its original name (see Aggregator.run).

func (as *agentServer) callTool(it item) mcpsdk.ToolHandler {
	return func(ctx context.Context, req *mcpsdk.CallToolRequest) (*mcpsdk.CallToolResult, error) {
		var res *mcpsdk.CallToolResult
		err := as.a.run(ctx, use{agentID: as.agentID, session: req.Session, extra: req.Extra, it: it, action: actionTool,
			args: req.Params.Arguments, progress: req.Params.GetProgressToken()},
			func(ctx context.Context, up *mcpsdk.ClientSession, progress any) (string, error) {
				var args any = map[string]any{}
				if len(req.Params.Arguments) > 0 {
					args = json.RawMessage(req.Params.Arguments)
				}
				params := &mcpsdk.CallToolParams{Name: it.name, Arguments: args}
				if progress != nil {
					params.SetProgressToken(progress)
				}
				r, err := up.CallTool(ctx, params)
				res = r
				if err == nil && r.IsError {
					return "tool_error", nil
				}
				return "ok", err
			})
		if err != nil {
			return nil, err
		}
		for _, c := range res.Content {
			visibleContent(it.prefix, c)
		}
		return res, nil
	}
}

func (as *agentServer) getPrompt(it item) mcpsdk.PromptHandler {
	return func(ctx context.Context, req *mcpsdk.GetPromptRequest) (*mcpsdk.GetPromptResult, error) {
		args, _ := json.Marshal(req.Params.Arguments)
		var res *mcpsdk.GetPromptResult
		err := as.a.run(ctx, use{agentID: as.agentID, session: req.Session, extra: req.Extra, it: it, action: actionPrompt, args: args},
			func(ctx context.Context, up *mcpsdk.ClientSession, _ any) (string, error) {
				r, err := up.GetPrompt(ctx, &mcpsdk.GetPromptParams{Name: it.name, Arguments: req.Params.Arguments})
				res = r
				return "ok", err
			})
		if err != nil {
			return nil, err
		}
		for _, m := range res.Messages {
			visibleContent(it.prefix, m.Content)
		}
		return res, nil
	}
}

// readResource reads a listed resource, or one a template produces
// (decided on the URI asked for).
func (as *agentServer) readResource(it item) mcpsdk.ResourceHandler {
	return func(ctx context.Context, req *mcpsdk.ReadResourceRequest) (*mcpsdk.ReadResourceResult, error) {
		orig, ok := originalURI(it.prefix, req.Params.URI)
		if !ok {
			return nil, mcpsdk.ResourceNotFoundError(req.Params.URI)
		}
		target := it
		target.name = orig
		var res *mcpsdk.ReadResourceResult
		err := as.a.run(ctx, use{agentID: as.agentID, session: req.Session, extra: req.Extra, it: target, action: actionResource},
			func(ctx context.Context, up *mcpsdk.ClientSession, _ any) (string, error) {
				r, err := up.ReadResource(ctx, &mcpsdk.ReadResourceParams{URI: orig})
				res = r
				return "ok", err
			})
		if err != nil {
			return nil, err
		}
		for _, c := range res.Contents {
			c.URI = visibleURI(it.prefix, c.URI)
		}
		return res, nil
	}
}

// visibleContent gives embedded resources their visible URIs.
func visibleContent(prefix string, c mcpsdk.Content) {
	switch v := c.(type) {
	case *mcpsdk.EmbeddedResource:
		if v.Resource != nil {
			v.Resource.URI = visibleURI(prefix, v.Resource.URI)
		}
	case *mcpsdk.ResourceLink:
		v.URI = visibleURI(prefix, v.URI)
	}
}

// lookupRef finds the prompt or resource template a completion refers to.
func (as *agentServer) lookupRef(ref *mcpsdk.CompleteReference) (item, bool, bool) {
	as.mu.Lock()
	defer as.mu.Unlock()
	switch ref.Type {
	case "ref/prompt":
		if it, ok := as.offered.prompts[ref.Name]; ok {
			return it, true, false
		}
		it, ok := as.denied.prompts[ref.Name]
		return it, false, ok
	case "ref/resource":
		if it, ok := as.offered.templates[ref.URI]; ok {
			return it, true, false
		}
		if it, ok := as.offered.resources[ref.URI]; ok {
			return it, true, false
		}
		it, ok := as.denied.templates[ref.URI]
		return it, false, ok
	}
	return item{}, false, false
}

// complete completes an argument of a prompt or resource template the
// agent may use (decided as a use of that item, audited as
// completion/complete).
func (as *agentServer) complete(ctx context.Context, req *mcpsdk.CompleteRequest) (*mcpsdk.CompleteResult, error) {
	ref := req.Params.Ref
	if ref == nil {
		return nil, rpcError(mcp.CodeInvalidParams, "completion/complete needs a ref")
	}
	as.know(ctx, func(s *itemSet) bool {
		_, p := s.prompts[ref.Name]
		return (ref.Type == "ref/prompt" && p) || (ref.Type == "ref/resource" && s.hasURI(ref.URI))
	})
	it, offered, withheld := as.lookupRef(ref)
	action := actionPrompt
	if ref.Type == "ref/resource" {
		action = actionResource
	}
	if withheld {
		return nil, as.a.refuse(ctx, req.Session, as.agentID, it, action, "")
	}
	if !offered {
		return &mcpsdk.CompleteResult{Completion: mcpsdk.CompletionResultDetails{Values: []string{}}}, nil
	}
	upRef := *ref
	if ref.Type == "ref/prompt" {
		upRef.Name = it.name
	} else {
		upRef.URI = it.name
	}
	var res *mcpsdk.CompleteResult
	err := as.a.run(ctx, use{agentID: as.agentID, session: req.Session, extra: req.Extra, it: it, action: action, audited: "completion/complete"},
		func(ctx context.Context, up *mcpsdk.ClientSession, _ any) (string, error) {
			r, err := up.Complete(ctx, &mcpsdk.CompleteParams{Ref: &upRef, Argument: req.Params.Argument, Context: req.Params.Context})
			res = r
			return "ok", err
		})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// subscribe subscribes the agent's session to updates of a resource it
// may read, through its own upstream session.
func (as *agentServer) subscribe(ctx context.Context, req *mcpsdk.SubscribeRequest) error {
	return as.subscription(ctx, req.Session, req.Params.URI, true)
}

func (as *agentServer) unsubscribe(ctx context.Context, req *mcpsdk.UnsubscribeRequest) error {
	return as.subscription(ctx, req.Session, req.Params.URI, false)
}

func (as *agentServer) subscription(ctx context.Context, ss *mcpsdk.ServerSession, uri string, on bool) error {
	as.know(ctx, func(s *itemSet) bool { return s.hasURI(uri) })
	it, ok := as.resourceOf(uri)
	if !ok {
		return mcpsdk.ResourceNotFoundError(uri)
	}
	d := as.a.sessionOf(ss)
	if d == nil {
		return rpcError(mcp.CodeInvalidRequest, "subscriptions need a session (initialize first)")
	}
	if !as.a.allowed(as.agentID, actionResource, it.server, it.name) {
		return as.a.refuse(ctx, ss, as.agentID, it, actionResource, "")
	}
	servers, _, err := as.a.m.Servers(ctx)
	if err != nil || servers[it.server] == nil {
		return rpcError(mcp.CodeUpstream, "the MCP server %s is unavailable", it.server)
	}
	up, err := d.upstream(ctx, it.server, servers[it.server])
	if err != nil {
		return rpcError(mcp.CodeUpstream, "the MCP server %s is unavailable", it.server)
	}
	if on {
		return up.Subscribe(ctx, &mcpsdk.SubscribeParams{URI: it.name})
	}
	return up.Unsubscribe(ctx, &mcpsdk.UnsubscribeParams{URI: it.name})
}

// resourceOf finds the upstream resource behind a visible URI: a listed
// one, or one of a template's server.
func (as *agentServer) resourceOf(uri string) (item, bool) {
	as.mu.Lock()
	defer as.mu.Unlock()
	if it, ok := as.offered.resources[uri]; ok {
		return it, true
	}
	for _, it := range as.offered.templates {
		if orig, ok := originalURI(it.prefix, uri); ok {
			it.name = orig
			return it, true
		}
	}
	return item{}, false
}
