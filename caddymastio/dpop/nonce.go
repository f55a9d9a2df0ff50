package dpop

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"sync"
	"time"
)

// Nonces issues DPoP-Nonce values statelessly: a nonce is a time step and
// an HMAC of it under a deployment key, valid for the current and the
// previous step. Every worker and host holding the key issues and accepts
// the same nonces, with no shared storage.
type Nonces struct {
	key  []byte
	step time.Duration

	mu      sync.Mutex
	curStep int64
	cur     string
}

// DefaultNonceStep is how long one nonce is issued for; each is accepted
// for up to two steps.
const DefaultNonceStep = 5 * time.Minute

// NewNonces returns a nonce source keyed by key (at least 32 bytes).
func NewNonces(key []byte, step time.Duration) *Nonces {
	if step <= 0 {
		step = DefaultNonceStep
	}
	return &Nonces{key: append([]byte(nil), key...), step: step}
}

func (n *Nonces) forStep(step int64) string {
	var buf [8 + 16]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(step))
	m := hmac.New(sha256.New, n.key)
	m.Write([]byte("dpop-nonce|"))
	m.Write(buf[:8])
	copy(buf[8:], m.Sum(nil))
	return base64.RawURLEncoding.EncodeToString(buf[:])
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
	raw, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(raw) != 24 {
		return false
	}
	step := int64(binary.BigEndian.Uint64(raw[:8]))
	cur := now.UnixNano() / int64(n.step)
	if step != cur && step != cur-1 {
		return false
	}
	return hmac.Equal([]byte(s), []byte(n.forStep(step)))
}
