package server

import (
	"net"
	"runtime"
	"sync"
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

// newGate returns a gate of n slots; n ≤ 0: GOMAXPROCS-1 (at least one).
// A P left out keeps the scheduler's eye on the network: while every P
// has work, Go looks for ready connections only from sysmon (every ~10 ms)
// and queues what it finds behind the global run queue, and a waiting
// handshake took its slot back straight after each read, so handshakes
// held every P while a thousand were pending. In a join storm on 2 cores
// the broker's goroutines woken by the network waited p99 13.9 ms with
// one slot against 33.5 ms with two, and the signalling round trip p99
// was 44-49 ms against 69-76 ms (half the Ps: the same on 2 cores).
func newGate(n int) gate {
	if n <= 0 {
		n = max(1, runtime.GOMAXPROCS(0)-1)
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

	wmu  sync.Mutex
	wbuf *[]byte // while corked: what TLS wrote, from corkBufs
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

// corkBufs hold what TLS writes to a corked connection: a writer's batch
// (up to writeChunk bytes, an objects frame more, and TLS's records'
// overhead).
var corkBufs = sync.Pool{New: func() any { b := make([]byte, 0, corkCap); return &b }}

const corkCap = writeChunk + objectsFrame + 8<<10

// Write writes p, or, while the connection is corked, keeps it for flush.
// crypto/tls writes each record of at most 16 KiB with its own Write;
// corked, a session writer's batch leaves in one write (a join storm's
// broker made ~21,000 write calls for 218 MB).
func (c *gatedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wbuf != nil {
		*c.wbuf = append(*c.wbuf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// cork makes writes wait for flush. Only the session's writer corks.
func (c *gatedConn) cork() {
	c.wmu.Lock()
	if c.wbuf == nil {
		c.wbuf = corkBufs.Get().(*[]byte)
	}
	c.wmu.Unlock()
}

// flush writes what was kept since cork, and uncorks.
func (c *gatedConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := c.wbuf
	if b == nil {
		return nil
	}
	c.wbuf = nil
	_, err := c.Conn.Write(*b)
	if cap(*b) <= corkCap { // not one grown by an oversized batch
		*b = (*b)[:0]
		corkBufs.Put(b)
	}
	return err
}
