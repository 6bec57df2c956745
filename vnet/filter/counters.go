package filter

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/pvc-project/pvc/security/policy"
)

// ruleCounter counts what one decision (one rule of one policy) let
// through or refused.
type ruleCounter struct {
	flows   atomic.Uint64
	packets atomic.Uint64
	bytes   atomic.Uint64
}

// policyState is the engine in force and the counters of its rules. A new
// engine starts new counters: rule indexes refer to the policy they came
// from.
type policyState struct {
	eng   *policy.Engine
	mu    sync.RWMutex
	rules map[policy.Decision]*ruleCounter // guarded by mu
}

func newPolicyState(e *policy.Engine) *policyState {
	return &policyState{eng: e, rules: make(map[policy.Decision]*ruleCounter)}
}

// counter returns the counters of decision d, creating them on first use.
func (ps *policyState) counter(d policy.Decision) *ruleCounter {
	ps.mu.RLock()
	rc := ps.rules[d]
	ps.mu.RUnlock()
	if rc != nil {
		return rc
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if rc = ps.rules[d]; rc == nil {
		rc = new(ruleCounter)
		ps.rules[d] = rc
	}
	return rc
}

// accum is the state of one batch. It adds up the packets that one rule
// allowed, so that a batch costs one atomic add per run of packets of the
// same rule instead of one per packet; and it keeps the flow of the last
// packet, with its shard read-locked, so that a run of packets of one flow
// (a bulk transfer) looks the flow up once. flush must end every batch.
type accum struct {
	rc             *ruleCounter
	packets, bytes uint64

	sh  *shard // read-locked while not nil
	key flowKey
	e   *entry // the allowed flow key in sh
}

// hold keeps e (allowed, in sh, which the caller has read-locked) as the
// batch's current flow; the lock passes to acc.
func (a *accum) hold(sh *shard, k flowKey, e *entry) {
	a.sh, a.key, a.e = sh, k, e
}

// release unlocks the current flow's shard.
func (a *accum) release() {
	if a.sh != nil {
		a.sh.mu.RUnlock()
		a.sh, a.e = nil, nil
	}
}

func (a *accum) add(rc *ruleCounter, n int) {
	if rc != a.rc {
		a.flush()
		a.rc = rc
	}
	a.packets++
	a.bytes += uint64(n)
}

func (a *accum) flush() {
	a.release()
	if a.rc != nil && a.packets > 0 {
		a.rc.packets.Add(a.packets)
		a.rc.bytes.Add(a.bytes)
	}
	a.rc, a.packets, a.bytes = nil, 0, 0
}

// Stats is a snapshot of a Filter's counters, for `pvcd status` and
// metrics. Rule counters start again from zero when a new engine is set
// (SetEngine); the others count from New.
type Stats struct {
	Flows int         // flows in the table now
	Rules []RuleStats // by layer, rule, allow

	UnknownPeer  uint64 // packets dropped: the remote virtual IP is no certified peer
	Malformed    uint64 // packets dropped: not well-formed IPv4, or transport header cut short
	IPv6         uint64 // packets dropped: IPv6 (the overlay is IPv4)
	WrongAddress uint64 // packets dropped: outbound not from, or inbound not to, Config.LocalIP
	Fragments    uint64 // later fragments dropped: their first fragment was not allowed (or not seen)
	NoFlow       uint64 // TCP packets dropped: no flow, and not a SYN that could open one
	Evicted      uint64 // flows removed to make room in a full table
	Expired      uint64 // flows removed after their idle timeout
	Removed      uint64 // flows removed by Reevaluate (peer gone) or Flush
}

// RuleStats counts one decision of the policy in force.
type RuleStats struct {
	policy.Decision
	Text string // the engine's explanation, e.g. "allow by global rule 3 (line 7): ..."
	// Flows is the number of new flows the rule allowed, or for a deny
	// the number of packets it refused: a refused flow leaves no state,
	// so each of its packets is a new attempt.
	Flows   uint64
	Packets uint64 // packets passed (or refused), including established flows' packets
	Bytes   uint64 // their IP bytes
}

// snapshot returns the rule counters, ordered.
func (ps *policyState) snapshot() []RuleStats {
	ps.mu.RLock()
	out := make([]RuleStats, 0, len(ps.rules))
	for d, rc := range ps.rules {
		out = append(out, RuleStats{
			Decision: d,
			Text:     ps.eng.Explain(d),
			Flows:    rc.flows.Load(),
			Packets:  rc.packets.Load(),
			Bytes:    rc.bytes.Load(),
		})
	}
	ps.mu.RUnlock()
	slices.SortFunc(out, func(a, b RuleStats) int {
		if c := cmp.Compare(a.Layer, b.Layer); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Rule, b.Rule); c != 0 {
			return c
		}
		if a.Allow == b.Allow {
			return 0
		}
		if a.Allow {
			return 1
		}
		return -1
	})
	return out
}
