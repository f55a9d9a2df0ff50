package dpop

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"sync"
	"time"

	"github.com/caddy-mastio/caddy-mastio/caddymastio/jwt"
)

// Nonces issues DPoP-Nonce values statelessly: a nonce is a time step and
// an HMAC of it under a deployment key and the epoch of the replay cache,
// valid for the current and the previous step. Everything holding the key
// and sharing the replay cache issues and accepts the same nonces, with no
// shared storage.
//
// The epoch is what makes replay protection survive a restart: the replay
// cache of a new process has a new epoch, so the nonces issued before the
// restart — and with them every proof the old cache saw — are refused
// (use_dpop_nonce: the client signs a fresh proof with a fresh nonce).
type Nonces struct {
	key   []byte
	step  time.Duration
	epoch []byte

	mu      sync.Mutex
	curStep int64
	cur     string
}

// DefaultNonceStep is how long one nonce is issued for; each is accepted
// for up to two steps.
const DefaultNonceStep = 5 * time.Minute

// NewNonces returns a nonce source keyed by key (at least 32 bytes) for
// the replay cache whose epoch is given.
func NewNonces(key []byte, step time.Duration, epoch []byte) *Nonces {
	if step <= 0 {
		step = DefaultNonceStep
	}
	return &Nonces{key: append([]byte(nil), key...), step: step, epoch: append([]byte(nil), epoch...)}
}

func (n *Nonces) forStep(step int64) string {
	var buf [8 + 16]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(step))
	m := hmac.New(sha256.New, n.key)
	m.Write([]byte("dpop-nonce|"))
	m.Write(n.epoch)
	m.Write([]byte("|"))
	m.Write(buf[:8])
	copy(buf[8:], m.Sum(nil))
	return base64.RawURLEncoding.EncodeToString(buf[:])
}

// SetEpoch binds the nonces to a new epoch of the replay cache (a shared
// cache lost what it remembered): those issued before are refused from
// now on.
func (n *Nonces) SetEpoch(epoch []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.epoch, n.cur = append([]byte(nil), epoch...), ""
}

// Current returns the nonce to hand out at now.
func (n *Nonces) Current(now time.Time) string {
	step := now.UnixNano() / int64(n.step)
	n.mu.Lock()
	defer n.mu.Unlock()
	if step != n.curStep || n.cur == "" {
		n.curStep, n.cur = step, n.forStep(step)
	}
	return n.cur
}

// Valid reports whether s is the nonce of the current or previous step.
func (n *Nonces) Valid(s string, now time.Time) bool {
	raw, err := jwt.DecodeBase64URL(s)
	if err != nil || len(raw) != 24 {
		return false
	}
	step := int64(binary.BigEndian.Uint64(raw[:8]))
	cur := now.UnixNano() / int64(n.step)
	if step != cur && step != cur-1 {
		return false
	}
	n.mu.Lock()
	want := n.forStep(step)
	n.mu.Unlock()
	return hmac.Equal([]byte(s), []byte(want))
}
