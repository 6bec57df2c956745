package server

import (
	"net"
	"runtime"
)

// gate bounds the sessions that set up (TLS handshake, Hello, Auth) on
// the CPU at once. A connection holds one of its slots while it computes
// and gives it back while it waits for its client (gatedConn), so a slow
// or silent client holds none. A thousand peers connecting at once then
// queue for the CPU outside the scheduler's run queues instead of in them,
// and the goroutines of established sessions (a signal to forward, a
// subscriber to write to) wait for a few handshakes' steps, not for
// hundreds.
type gate chan struct{}

// newGate returns a gate of n slots; n ≤ 0: one per P (GOMAXPROCS).
// (Half the Ps, to keep the others free for established sessions, did not
// shorten the signalling tail of a join storm on 2 cores and slowed the
// storm: the tail there is the machine's run queue, not Go's.)
func newGate(n int) gate {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	return make(gate, n)
}

// gatedConn is a connection in set-up: its goroutine holds a slot of the
// gate except while it reads. Read and release are called by that
// goroutine only.
type gatedConn struct {
	net.Conn
	g    gate
	held bool // this goroutine holds a slot
	open bool // set-up over: no more gating
}

// gated wraps c, taking a slot for the set-up's first step.
func (g gate) gated(c net.Conn) *gatedConn {
	g <- struct{}{}
	return &gatedConn{Conn: c, g: g, held: true}
}

func (c *gatedConn) Read(p []byte) (int, error) {
	if c.open {
		return c.Conn.Read(p)
	}
	if c.held {
		<-c.g
		c.held = false
	}
	n, err := c.Conn.Read(p)
	c.g <- struct{}{}
	c.held = true
	return n, err
}

// release gives back the slot: the set-up is over (or failed).
func (c *gatedConn) release() {
	if c.held {
		<-c.g
		c.held = false
	}
	c.open = true
}
