// Package watch holds the callbacks of the parts that follow a change.
package watch

import (
	"maps"
	"slices"
	"sync"
)

// Set is a set of callbacks, each called with what changed. The zero
// value is ready to use.
type Set[T any] struct {
	mu  sync.Mutex
	seq int
	fns map[int]func(T)
}

// Add registers fn; remove unregisters it.
func (w *Set[T]) Add(fn func(T)) (remove func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fns == nil {
		w.fns = map[int]func(T){}
	}
	w.seq++
	id := w.seq
	w.fns[id] = fn
	return func() {
		w.mu.Lock()
		delete(w.fns, id)
		w.mu.Unlock()
	}
}

// Notify calls every callback with v, without holding the set: a callback
// may add or remove callbacks.
func (w *Set[T]) Notify(v T) {
	w.mu.Lock()
	fns := slices.Collect(maps.Values(w.fns))
	w.mu.Unlock()
	for _, fn := range fns {
		fn(v)
	}
}
