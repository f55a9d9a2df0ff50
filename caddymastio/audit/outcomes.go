package audit

import (
	"bytes"
	"slices"
	"strconv"
)

// The rows of a forwarded MCP call. The mcp.forward row (the decision) is
// durable before the agent gets the answer; the mcp.call row (the outcome,
// naming the forward row in forward_seq) follows in the next commit
// without the answer waiting for it. A crash between the two loses only
// the outcome: the call is then "outcome unknown", never missing. Calls
// refused or failed before forwarding have one mcp.call row and no
// forward_seq.
const (
	TypeMCPForward = "mcp.forward"
	TypeMCPCall    = "mcp.call"
)

// maxUnknownSeqs bounds the seqs an OutcomeUnknown keeps (the count is
// exact).
const maxUnknownSeqs = 100

// OutcomeUnknown is what a walk of the chain found of forwarded MCP calls
// whose mcp.call row is not in it: calls still at their upstream, or whose
// outcome a crash lost. The chain is intact either way.
type OutcomeUnknown struct {
	Count int64   `json:"count"`
	Seqs  []int64 `json:"forward_seqs,omitempty"` // the first of them (at most 100), ascending
}

// outcomes pairs mcp.forward rows with their mcp.call rows during a walk.
type outcomes struct{ open map[int64]struct{} }

var forwardSeqKey = []byte(`"forward_seq":`)

// see takes one row, in chain order; details are canonical JSON.
func (o *outcomes) see(typ string, seq int64, details []byte) {
	switch typ {
	case TypeMCPForward:
		if o.open == nil {
			o.open = map[int64]struct{}{}
		}
		o.open[seq] = struct{}{}
	case TypeMCPCall:
		i := bytes.Index(details, forwardSeqKey)
		if i < 0 {
			return
		}
		rest := details[i+len(forwardSeqKey):]
		end := 0
		for end < len(rest) && rest[end] >= '0' && rest[end] <= '9' {
			end++
		}
		if n, err := strconv.ParseInt(string(rest[:end]), 10, 64); err == nil {
			delete(o.open, n)
		}
	}
}

// result reports the forwards left without an outcome.
func (o *outcomes) result() OutcomeUnknown {
	r := OutcomeUnknown{Count: int64(len(o.open))}
	for seq := range o.open {
		r.Seqs = append(r.Seqs, seq)
	}
	slices.Sort(r.Seqs)
	if len(r.Seqs) > maxUnknownSeqs {
		r.Seqs = r.Seqs[:maxUnknownSeqs]
	}
	return r
}
