package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	mcpsdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/mastio"
)

// catalog is what one upstream server offers.
type catalog struct {
	at        time.Time
	digest    [32]byte // of the lists: a new listing that differs is a change
	tools     []*mcpsdk.Tool
	prompts   []*mcpsdk.Prompt
	resources []*mcpsdk.Resource
	templates []*mcpsdk.ResourceTemplate
	// completions and subscriptions are the server's capabilities to
	// complete arguments and to notify resource updates.
	completions   bool
	subscriptions bool
}

// listCatalog lists everything sess's server offers (every page).
func listCatalog(ctx context.Context, sess *mcpsdk.ClientSession) (*catalog, error) {
	c := &catalog{at: time.Now()}
	caps := &mcpsdk.ServerCapabilities{}
	if r := sess.InitializeResult(); r != nil && r.Capabilities != nil {
		caps = r.Capabilities
	}
	if caps.Tools != nil {
		for t, err := range sess.Tools(ctx, nil) {
			if err != nil {
				return nil, err
			}
			c.tools = append(c.tools, t)
		}
	}
	if caps.Prompts != nil {
		for p, err := range sess.Prompts(ctx, nil) {
			if err != nil {
				return nil, err
			}
			c.prompts = append(c.prompts, p)
		}
	}
	if caps.Resources != nil {
		c.subscriptions = caps.Resources.Subscribe
		for r, err := range sess.Resources(ctx, nil) {
			if err != nil {
				return nil, err
			}
			c.resources = append(c.resources, r)
		}
		for t, err := range sess.ResourceTemplates(ctx, nil) {
			if err != nil {
				return nil, err
			}
			c.templates = append(c.templates, t)
		}
	}
	c.completions = caps.Completions != nil
	lists, err := json.Marshal([]any{c.tools, c.prompts, c.resources, c.templates})
	if err != nil {
		return nil, err
	}
	c.digest = sha256.Sum256(lists)
	return c, nil
}

// Names: an upstream's tools and prompts are offered as <prefix>.<name>,
// its resources and resource templates under the URI scheme
// mastio-<prefix>+<scheme> (an "_" of the prefix written "."), so that
// every item of every server has a name of its own and the original is
// read back from it. A server with the prefix "-" keeps its own names.

// visibleName is the name an item of the server with prefix is offered
// under.
func visibleName(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// uriSchemePrefix introduces a namespaced resource URI.
const uriSchemePrefix = "mastio-"

// visibleURI is the URI (or URI template) an upstream resource is offered
// under.
func visibleURI(prefix, uri string) string {
	if prefix == "" {
		return uri
	}
	return uriSchemePrefix + strings.ReplaceAll(prefix, "_", ".") + "+" + uri
}

// originalURI reverses visibleURI for the server with prefix: false if
// uri is not one of that server's.
func originalURI(prefix, uri string) (string, bool) {
	if prefix == "" {
		return uri, true
	}
	return strings.CutPrefix(uri, visibleURI(prefix, ""))
}

// catalogOf returns the server's catalog, listing it again when it is
// older than catalogTTL or a list changed; a listing under way is waited
// for. A new or different catalog is announced (Pool.OnChange).
func (p *Pool) catalogOf(ctx context.Context, name string, s *mastio.Server) (*catalog, error) {
	c := p.entry(name, s)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cat := c.catalog.Load(); cat != nil && time.Since(cat.at) < catalogTTL && !c.stale.Load() {
		return cat, nil
	}
	c.stale.Store(false)
	sess, err := p.sessionLocked(ctx, c, name, s)
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, s.CallTimeout())
	defer cancel()
	cat, err := listCatalog(lctx, sess)
	if err != nil {
		c.session = nil // broken: the next use connects again
		go sess.Close()
		return nil, fmt.Errorf("listing MCP server %s: %w", name, err)
	}
	if old := c.catalog.Swap(cat); old == nil || old.digest != cat.digest {
		go p.changed()
	}
	return cat, nil
}

// cachedCatalog returns the server's last catalog (nil if it was never
// listed) without waiting: one that is old or out of date is listed again
// in the background, and its change announced.
func (p *Pool) cachedCatalog(name string, s *mastio.Server) *catalog {
	c := p.entry(name, s)
	cat := c.catalog.Load()
	if (cat == nil || time.Since(cat.at) >= catalogTTL || c.stale.Load()) && c.refreshing.CompareAndSwap(false, true) {
		go func() {
			defer c.refreshing.Store(false)
			p.catalogOf(context.Background(), name, s)
		}()
	}
	return cat
}

// catalogs returns the catalogs of servers by name: when wait, listed as
// needed, concurrently (a slow server delays the answer by its own
// timeout at most), with the errors of those that cannot be listed; else
// the last ones known (cachedCatalog), without waiting.
func (p *Pool) catalogs(ctx context.Context, servers map[string]*mastio.Server, wait bool) (map[string]*catalog, map[string]error) {
	cats, errs := map[string]*catalog{}, map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, s := range servers {
		if !wait {
			if cat := p.cachedCatalog(name, s); cat != nil {
				cats[name] = cat
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cat, err := p.catalogOf(ctx, name, s)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[name] = err
			} else {
				cats[name] = cat
			}
		}()
	}
	wg.Wait()
	return cats, errs
}
