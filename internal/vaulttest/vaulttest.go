// Package vaulttest is a stand-in for HashiCorp Vault in tests: an HTTP
// server on loopback that implements the part of Vault's API the
// vaultkeys store uses — KV version 2 reads and check-and-set writes
// (GET/PUT /v1/<mount>/data/<path>), token renewal (PUT
// /v1/auth/token/renew-self) — with Vault's status codes and error bodies,
// and the states the runbook's §4 is about: sealed (503 "Vault is
// sealed"), stopped (connection refused), a token it refuses (403
// "permission denied"), a token that expires unless renewed.
//
// A real Vault cannot be had here: the hashicorp/vault module resolves from
// the Go module proxy but does not build outside its own repository (its
// go.mod replaces api and sdk with in-tree copies the proxy does not serve;
// v1.21.4 with sdk v0.21.0 or v0.25.1 fails to compile, after an 8.5-minute
// build on two cores), and Debian has no package. The README says so.
package vaulttest

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Vault is the stand-in.
type Vault struct {
	Token string // the token it accepts
	TTL   time.Duration

	t    testing.TB
	addr string
	srv  *http.Server

	mu       sync.Mutex
	sealed   bool
	expires  time.Time
	renewals int
	secrets  map[string]*secret
}

type secret struct {
	version int
	data    map[string]any
}

// Start runs a stand-in on a free loopback port; token expires after ttl
// unless renewed (0: never).
func Start(t testing.TB, token string, ttl time.Duration) *Vault {
	v := &Vault{Token: token, TTL: ttl, t: t, secrets: map[string]*secret{}}
	if ttl > 0 {
		v.expires = time.Now().Add(ttl)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	v.addr = ln.Addr().String()
	v.serve(ln)
	t.Cleanup(v.Stop)
	return v
}

// Addr is the stand-in's URL.
func (v *Vault) Addr() string { return "http://" + v.addr }

func (v *Vault) serve(ln net.Listener) {
	v.srv = &http.Server{Handler: http.HandlerFunc(v.handle)}
	go v.srv.Serve(ln)
}

// Stop makes Vault unreachable (connection refused).
func (v *Vault) Stop() {
	if v.srv != nil {
		v.srv.Close()
		v.srv = nil
	}
}

// Restart brings a stopped Vault back on the same address.
func (v *Vault) Restart() {
	ln, err := net.Listen("tcp", v.addr)
	if err != nil {
		v.t.Fatal(err)
	}
	v.serve(ln)
}

// Seal and Unseal change the seal state.
func (v *Vault) Seal()   { v.mu.Lock(); v.sealed = true; v.mu.Unlock() }
func (v *Vault) Unseal() { v.mu.Lock(); v.sealed = false; v.mu.Unlock() }

// Renewals is how often the token was renewed.
func (v *Vault) Renewals() int { v.mu.Lock(); defer v.mu.Unlock(); return v.renewals }

// Put sets a secret's fields (a new version), as an operator would.
func (v *Vault) Put(path string, data map[string]any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.secrets[path]
	if s == nil {
		s = &secret{}
		v.secrets[path] = s
	}
	s.version++
	s.data = data
}

// Get returns a secret's fields (nil if none).
func (v *Vault) Get(path string) map[string]any {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s := v.secrets[path]; s != nil {
		return s.data
	}
	return nil
}

func errorsBody(w http.ResponseWriter, status int, msgs ...string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"errors": msgs})
}

func (v *Vault) handle(w http.ResponseWriter, r *http.Request) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sealed {
		errorsBody(w, 503, "Vault is sealed")
		return
	}
	if r.Header.Get("X-Vault-Token") != v.Token || (!v.expires.IsZero() && time.Now().After(v.expires)) {
		errorsBody(w, 403, "permission denied")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if r.URL.Path == "/v1/auth/token/renew-self" && r.Method == http.MethodPut {
		if v.TTL == 0 {
			errorsBody(w, 400, "lease is not renewable")
			return
		}
		v.expires = time.Now().Add(v.TTL)
		v.renewals++
		json.NewEncoder(w).Encode(map[string]any{"auth": map[string]any{"client_token": v.Token, "renewable": true,
			"lease_duration": int(v.TTL.Seconds()), "policies": []string{"mastio"}}})
		return
	}
	mount, path, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/"), "/data/")
	if !ok {
		errorsBody(w, 404)
		return
	}
	key := mount + "/" + path
	switch r.Method {
	case http.MethodGet:
		s := v.secrets[key]
		if s == nil {
			errorsBody(w, 404)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"data": s.data,
			"metadata": map[string]any{"version": s.version, "created_time": time.Now().UTC().Format(time.RFC3339Nano), "deletion_time": "", "destroyed": false}}})
	case http.MethodPut, http.MethodPost:
		var body struct {
			Data    map[string]any `json:"data"`
			Options struct {
				CAS *int `json:"cas"`
			} `json:"options"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			errorsBody(w, 400, "error parsing JSON")
			return
		}
		s := v.secrets[key]
		current := 0
		if s != nil {
			current = s.version
		}
		if body.Options.CAS != nil && *body.Options.CAS != current {
			errorsBody(w, 400, "check-and-set parameter did not match the current version")
			return
		}
		if s == nil {
			s = &secret{}
			v.secrets[key] = s
		}
		s.version++
		s.data = body.Data
		json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"version": s.version,
			"created_time": time.Now().UTC().Format(time.RFC3339Nano), "deletion_time": "", "destroyed": false}})
	default:
		errorsBody(w, 405)
	}
}
