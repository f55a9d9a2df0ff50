// Package vaultkeys keeps the Org CA's private keys in HashiCorp Vault:
// one KV version 2 secret (default secret/data/mastio) whose fields hold
// the keys as PEM — org_ca_pem for the Org CA's, intermediate_pem for the
// Mastio intermediate's, the field names of the original Mastio.
//
// A Vault that cannot answer (sealed, unreachable, a refused token, a
// secret without the field) is a pki.UnavailableError carrying the
// runbook's words ("Vault is sealed", "Vault secret at 'secret/data/mastio'
// missing field 'org_ca_pem'"): the CA runs without its keys, /readyz
// says why, and it recovers by itself once Vault answers.
package vaultkeys

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
	"go.uber.org/zap"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/pki"
)

// Config says where the keys are and how to reach them.
type Config struct {
	// Address of Vault; default $VAULT_ADDR.
	Address string
	// Mount of the KV v2 engine (default "secret") and Path of the secret
	// in it (default "mastio"): secret/data/mastio.
	Mount, Path string
	// TokenFile holds the token (as Vault Agent writes it); read again
	// when Vault refuses the token. Default: $VAULT_TOKEN.
	TokenFile string
	// CACert is a PEM file of the roots Vault's TLS certificate chains to.
	CACert string
	// Timeout of each request (default 5s).
	Timeout time.Duration
	// Logger logs renewals and recoveries.
	Logger *zap.Logger
}

// Field names of the keys in the secret.
var fields = map[string]string{
	pki.RootKeyName:         "org_ca_pem",
	pki.IntermediateKeyName: "intermediate_pem",
}

// Store is a pki.KeyStore in a Vault KV v2 secret.
type Store struct {
	cfg    Config
	client *vault.Client
	kv     *vault.KVv2
	secret string // mount/data/path, as the runbook names it

	tokenMu sync.Mutex
	renewal context.CancelFunc
}

// New makes a store; it does not reach Vault (Load and Store do).
func New(cfg Config) (*Store, error) {
	if cfg.Mount == "" {
		cfg.Mount = "secret"
	}
	if cfg.Path == "" {
		cfg.Path = "mastio"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	vc := vault.DefaultConfig() // reads VAULT_ADDR, VAULT_CACERT, ...
	if vc.Error != nil {
		return nil, fmt.Errorf("vault: %w", vc.Error)
	}
	if cfg.Address != "" {
		vc.Address = cfg.Address
	}
	vc.Timeout = cfg.Timeout
	vc.MaxRetries = 0 // the CA retries on its own schedule; a request must not hang on a sealed Vault
	if cfg.CACert != "" {
		if err := vc.ConfigureTLS(&vault.TLSConfig{CACert: cfg.CACert}); err != nil {
			return nil, fmt.Errorf("vault: ca_cert %s: %w", cfg.CACert, err)
		}
	}
	client, err := vault.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	s := &Store{cfg: cfg, client: client, kv: client.KVv2(cfg.Mount), secret: cfg.Mount + "/data/" + cfg.Path}
	if err := s.loadToken(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) String() string { return "vault:" + s.client.Address() + "/" + s.secret }

// loadToken sets the token from the file, or keeps $VAULT_TOKEN.
func (s *Store) loadToken() error {
	if s.cfg.TokenFile == "" {
		if s.client.Token() == "" {
			return errors.New("vault: no token: set VAULT_TOKEN or token_file")
		}
		return nil
	}
	data, err := os.ReadFile(s.cfg.TokenFile)
	if err != nil {
		return fmt.Errorf("vault: token_file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if tok == "" {
		return fmt.Errorf("vault: token_file %s is empty", s.cfg.TokenFile)
	}
	s.tokenMu.Lock()
	s.client.SetToken(tok)
	s.tokenMu.Unlock()
	return nil
}

// Load implements pki.KeyStore.
func (s *Store) Load(name string) ([]byte, error) {
	field, ok := fields[name]
	if !ok {
		return nil, fmt.Errorf("vault holds the CA keys only, not %q", name)
	}
	data, _, err := s.read()
	if err != nil {
		return nil, err
	}
	v, _ := data[field].(string)
	if v == "" {
		return nil, &pki.UnavailableError{Reason: fmt.Sprintf("Vault secret at '%s' missing field '%s'", s.secret, field), Err: os.ErrNotExist}
	}
	return []byte(v), nil
}

// Store implements pki.KeyStore: a new version of the secret with the
// field set and every other field kept, written only if no one wrote a
// version meanwhile (check-and-set).
func (s *Store) Store(name string, keyPEM []byte) error {
	return s.update(name, string(keyPEM))
}

// Delete implements pki.KeyStore (a new version without the field).
func (s *Store) Delete(name string) error { return s.update(name, "") }

func (s *Store) update(name, value string) error {
	field, ok := fields[name]
	if !ok {
		return fmt.Errorf("vault holds the CA keys only, not %q", name)
	}
	for try := 0; try < 3; try++ {
		data, version, err := s.read()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		next := map[string]any{}
		for k, v := range data {
			next[k] = v
		}
		if value == "" {
			delete(next, field)
		} else {
			next[field] = value
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		_, err = s.kv.Put(ctx, s.cfg.Path, next, vault.WithCheckAndSet(version))
		cancel()
		if err == nil {
			return nil
		}
		if re := responseError(err); re != nil && re.StatusCode == http.StatusBadRequest && strings.Contains(strings.Join(re.Errors, " "), "check-and-set") {
			continue // someone wrote a version meanwhile: read again
		}
		return s.unavailable(err)
	}
	return fmt.Errorf("vault: %s kept changing while %s was written", s.secret, field)
}

// read returns the secret's fields and version (version 0 and an error
// wrapping os.ErrNotExist when there is no secret).
func (s *Store) read() (map[string]any, int, error) {
	for attempt := 0; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		sec, err := s.kv.Get(ctx, s.cfg.Path)
		cancel()
		switch {
		case err == nil:
			if sec.Data == nil { // the latest version was deleted
				return map[string]any{}, sec.VersionMetadata.Version, &pki.UnavailableError{
					Reason: fmt.Sprintf("Vault secret at '%s' is deleted", s.secret), Err: os.ErrNotExist}
			}
			version := 0
			if sec.VersionMetadata != nil {
				version = sec.VersionMetadata.Version
			}
			return sec.Data, version, nil
		case errors.Is(err, vault.ErrSecretNotFound):
			return map[string]any{}, 0, &pki.UnavailableError{
				Reason: fmt.Sprintf("Vault secret at '%s' missing field '%s'", s.secret, fields[pki.RootKeyName]), Err: os.ErrNotExist}
		}
		// A refused token may have been renewed into the file meanwhile.
		if re := responseError(err); re != nil && re.StatusCode == http.StatusForbidden && s.cfg.TokenFile != "" && attempt == 0 {
			if s.loadToken() == nil {
				continue
			}
		}
		return nil, 0, s.unavailable(err)
	}
}

// unavailable names what is wrong with Vault in the runbook's words.
func (s *Store) unavailable(err error) error {
	re := responseError(err)
	switch {
	case re == nil:
		return &pki.UnavailableError{Reason: "Vault is unreachable", Err: fmt.Errorf("%s: %w", s.client.Address(), err)}
	case re.StatusCode == http.StatusServiceUnavailable && strings.Contains(strings.ToLower(strings.Join(re.Errors, " ")), "sealed"):
		return &pki.UnavailableError{Reason: "Vault is sealed", Err: fmt.Errorf("%s: unseal it (vault operator unseal)", s.client.Address())}
	case re.StatusCode == http.StatusServiceUnavailable:
		return &pki.UnavailableError{Reason: "503 Service Unavailable from Vault", Err: fmt.Errorf("%s: %s", s.client.Address(), strings.Join(re.Errors, "; "))}
	case re.StatusCode == http.StatusForbidden:
		return &pki.UnavailableError{Reason: "Vault refused the token", Err: fmt.Errorf("%s: 403 permission denied on %s", s.client.Address(), s.secret)}
	default:
		return &pki.UnavailableError{Reason: fmt.Sprintf("Vault answered %d", re.StatusCode), Err: fmt.Errorf("%s: %s", s.client.Address(), strings.Join(re.Errors, "; "))}
	}
}

func responseError(err error) *vault.ResponseError {
	var re *vault.ResponseError
	if errors.As(err, &re) {
		return re
	}
	return nil
}

// Renew keeps a renewable token alive until Close: Vault's lifetime
// watcher renews it before it expires; when it can no longer, the token
// is read again from the token file (Vault Agent's renewal) and watched
// anew. A token that is not renewable (a root token) is left alone.
func (s *Store) Renew() {
	ctx, cancel := context.WithCancel(context.Background())
	s.renewal = cancel
	go func() {
		for ctx.Err() == nil {
			s.watchToken(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(30 * time.Second):
				s.loadToken()
			}
		}
	}()
}

func (s *Store) watchToken(ctx context.Context) {
	// A renewal of the token itself gives the watcher its lease; a token
	// that cannot be renewed (a root token, say) is left alone.
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	sec, err := s.client.Auth().Token().RenewSelfWithContext(rctx, 0)
	cancel()
	if err != nil || sec == nil || sec.Auth == nil || !sec.Auth.Renewable {
		return
	}
	w, err := s.client.NewLifetimeWatcher(&vault.LifetimeWatcherInput{Secret: sec})
	if err != nil {
		return
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-w.DoneCh():
			if err != nil {
				s.cfg.Logger.Warn("vault token renewal stopped", zap.Error(err))
			}
			return
		case r := <-w.RenewCh():
			s.cfg.Logger.Debug("vault token renewed", zap.Int("ttl_seconds", r.Secret.Auth.LeaseDuration))
		}
	}
}

// Close stops the renewal.
func (s *Store) Close() error {
	if s.renewal != nil {
		s.renewal()
	}
	return nil
}

// Interface guards
var _ pki.KeyStore = (*Store)(nil)
