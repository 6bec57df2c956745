package filter

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvc-project/pvc/security/policy"
)

// Timeouts are the idle times after which a flow is forgotten. A zero field
// takes its default.
type Timeouts struct {
	TCPEstablished time.Duration // both sides sent, no FIN or RST yet; default 1 h
	TCPTransitory  time.Duration // only the opener sent (SYN), or FIN/RST seen; default 30 s
	UDP            time.Duration // default 60 s
	ICMP           time.Duration // default 30 s
	Other          time.Duration // other IP protocols; default 60 s
}

// DefaultMaxFlows is the table's bound when Config.MaxFlows is zero.
const DefaultMaxFlows = 65536

func (t Timeouts) withDefaults() Timeouts {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.TCPEstablished, time.Hour)
	def(&t.TCPTransitory, 30*time.Second)
	def(&t.UDP, 60*time.Second)
	def(&t.ICMP, 30*time.Second)
	def(&t.Other, 60*time.Second)
	return t
}

// TCP states of a flow.
const (
	tcpNew         = 0 // only the opener has sent
	tcpEstablished = 1 // both sides have sent
	tcpClosing     = 2 // a FIN or RST was seen
)

// touchEvery is how stale a flow's last-seen time may get before a packet
// writes it again: fewer writes to a line that both directions read.
const touchEvery = int64(250 * time.Millisecond)

// flowKey is a flow's 5-tuple seen from this host: local and remote
// address, protocol, local and remote port. Both directions of a flow map
// to the same key.
type flowKey struct {
	addrs uint64 // local << 32 | remote
	rest  uint64 // proto << 32 | lport << 16 | rport
}

func makeKey(proto uint8, local, remote [4]byte, lport, rport uint16) flowKey {
	return flowKey{
		addrs: uint64(be32(local))<<32 | uint64(be32(remote)),
		rest:  uint64(proto)<<32 | uint64(lport)<<16 | uint64(rport),
	}
}

func be32(a [4]byte) uint32 {
	return uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
}

func (k flowKey) proto() uint8    { return uint8(k.rest >> 32) }
func (k flowKey) lport() uint16   { return uint16(k.rest >> 16) }
func (k flowKey) rport() uint16   { return uint16(k.rest) }
func (k flowKey) local() [4]byte  { return from32(uint32(k.addrs >> 32)) }
func (k flowKey) remote() [4]byte { return from32(uint32(k.addrs)) }
func from32(v uint32) (a [4]byte) {
	a[0], a[1], a[2], a[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v)
	return
}
func (k flowKey) hash() uint64           { return mix(k.addrs ^ mix(k.rest)) }
func mix(x uint64) uint64                { x ^= x >> 33; x *= 0xff51afd7ed558ccd; x ^= x >> 33; return x }
func (e *entry) deadline(t *table) int64 { return e.last.Load() + t.timeout(e) }

// entry is one flow. key, dir and rc are written only under the shard's
// write lock; last and state are atomics that packets update under the
// read lock. Entries are recycled, so nobody keeps a pointer to one after
// releasing the shard's lock.
type entry struct {
	key flowKey
	dir policy.Direction // who opened it
	rc  *ruleCounter     // the counters of the rule that decided it
	// denied marks a flow that a policy change refused: its packets are
	// dropped both ways until it expires.
	denied bool
	last   atomic.Int64  // clock of the last packet
	state  atomic.Uint32 // tcp* for TCP; 0 otherwise
}

// shard is one lock's share of the table.
type shard struct {
	mu   sync.RWMutex
	m    map[flowKey]*entry // guarded by mu
	free []*entry           // recycled entries; guarded by mu
	_    [64]byte           // keep shards' locks on separate cache lines
}

// table is the flow table: a fixed number of shards, each bounded.
type table struct {
	shards   []shard
	mask     uint64
	perShard int
	to       [5]int64 // established, transitory, udp, icmp, other (ns)
	evicted  atomic.Uint64
	expired  atomic.Uint64
}

func newTable(max int, to Timeouts) *table {
	if max <= 0 {
		max = DefaultMaxFlows
	}
	n := 64
	for n > 1 && max/n < 64 {
		n /= 2
	}
	t := &table{shards: make([]shard, n), mask: uint64(n - 1), perShard: max / n}
	for i := range t.shards {
		t.shards[i].m = make(map[flowKey]*entry)
	}
	to = to.withDefaults()
	t.to = [5]int64{int64(to.TCPEstablished), int64(to.TCPTransitory), int64(to.UDP), int64(to.ICMP), int64(to.Other)}
	return t
}

func (t *table) shard(k flowKey) *shard { return &t.shards[k.hash()&t.mask] }

// timeout is e's idle timeout in its current state.
func (t *table) timeout(e *entry) int64 {
	switch e.key.proto() {
	case protoTCP:
		if e.state.Load() == tcpEstablished {
			return t.to[0]
		}
		return t.to[1]
	case protoUDP:
		return t.to[2]
	case protoICMP:
		return t.to[3]
	}
	return t.to[4]
}

// touch records a packet of e sent by side dir (policy.Outbound: this
// host) with TCP flags. It returns false when a TCP SYN reopens a closing
// flow: the caller then decides it again as a new flow. Hold at least the
// read lock.
func touch(e *entry, dir policy.Direction, flags uint8, now int64) bool {
	if now-e.last.Load() >= touchEvery {
		e.last.Store(now)
	}
	if e.key.proto() != protoTCP {
		return true
	}
	s := e.state.Load()
	switch {
	case flags&(tcpSYN|tcpACK) == tcpSYN && s == tcpClosing:
		return false
	case flags&(tcpFIN|tcpRST) != 0:
		if s != tcpClosing {
			e.state.Store(tcpClosing)
		}
	case s == tcpNew && dir != e.dir:
		e.state.Store(tcpEstablished)
	}
	return true
}

// insertLocked adds a flow to sh, making room first if sh is full. Must
// hold sh.mu for writing; k must not be in sh.
func (t *table) insertLocked(sh *shard, k flowKey, dir policy.Direction, rc *ruleCounter, now int64) *entry {
	if len(sh.m) >= t.perShard {
		t.makeRoomLocked(sh, now)
	}
	var e *entry
	if n := len(sh.free); n > 0 {
		e = sh.free[n-1]
		sh.free[n-1] = nil
		sh.free = sh.free[:n-1]
	} else {
		e = new(entry)
	}
	e.key, e.dir, e.rc, e.denied = k, dir, rc, false
	e.last.Store(now)
	e.state.Store(tcpNew)
	sh.m[k] = e
	return e
}

// makeRoomLocked removes sh's expired flows, or if none has expired the
// one closest to expiry (so transitory TCP, UDP and ICMP flows go before
// established TCP). Must hold sh.mu for writing.
func (t *table) makeRoomLocked(sh *shard, now int64) {
	if t.sweepLocked(sh, now) > 0 {
		return
	}
	var victim *entry
	var vd int64
	for _, e := range sh.m {
		if d := e.deadline(t); victim == nil || d < vd {
			victim, vd = e, d
		}
	}
	if victim != nil {
		t.removeLocked(sh, victim)
		t.evicted.Add(1)
	}
}

// removeLocked deletes e from sh and recycles it. Must hold sh.mu for
// writing.
func (t *table) removeLocked(sh *shard, e *entry) {
	delete(sh.m, e.key)
	e.rc = nil
	if len(sh.free) < t.perShard {
		sh.free = append(sh.free, e)
	}
}

// sweepLocked removes sh's expired flows. Must hold sh.mu for writing.
func (t *table) sweepLocked(sh *shard, now int64) int {
	n := 0
	for _, e := range sh.m {
		if now > e.deadline(t) {
			t.removeLocked(sh, e)
			n++
		}
	}
	t.expired.Add(uint64(n))
	return n
}

// sweep removes every expired flow.
func (t *table) sweep(now int64) int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		n += t.sweepLocked(sh, now)
		sh.mu.Unlock()
	}
	return n
}

// len counts the flows.
func (t *table) len() int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// each calls fn for every flow under its shard's write lock; fn returns
// false to remove the flow. It returns how many were removed.
func (t *table) each(fn func(e *entry) bool) int {
	n := 0
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for _, e := range sh.m {
			if !fn(e) {
				t.removeLocked(sh, e)
				n++
			}
		}
		sh.mu.Unlock()
	}
	return n
}
