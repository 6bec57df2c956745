package server

import (
	"net"
	"testing"
	"time"
)

// TestGate: a connection in set-up holds a slot of the gate only while it
// computes: one blocked reading a silent client lets another set up.
func TestGate(t *testing.T) {
	g := newGate(1)
	silent, silentPeer := net.Pipe()
	defer silentPeer.Close()
	a := g.gated(silent)
	read := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1)) // gives the slot back while it waits
		a.release()
		read <- err
	}()
	other, otherPeer := net.Pipe()
	defer otherPeer.Close()
	took := make(chan *gatedConn, 1)
	go func() { took <- g.gated(other) }()
	var b *gatedConn
	select {
	case b = <-took:
	case <-time.After(5 * time.Second):
		t.Fatal("a connection waiting for its silent client kept the gate's only slot")
	}
	go otherPeer.Write([]byte{1})
	if _, err := b.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	b.release()
	b.release() // idempotent
	go otherPeer.Write([]byte{2})
	if _, err := b.Read(make([]byte, 1)); err != nil || len(g) != 0 { // after release: not gated
		t.Fatalf("read after release: %v, %d slots held", err, len(g))
	}
	silentPeer.Close()
	if err := <-read; err == nil {
		t.Fatal("read from a closed pipe succeeded")
	}
	if len(g) != 0 {
		t.Fatalf("%d slots still held", len(g))
	}
}
