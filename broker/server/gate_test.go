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

// TestCork: while corked, what TLS writes is kept and leaves in one write
// at flush, in order; uncorked, writes pass through.
func TestCork(t *testing.T) {
	c, peer := net.Pipe()
	defer c.Close()
	defer peer.Close()
	g := newGate(1)
	gc := g.gated(c)
	gc.release()
	gc.cork()
	for _, s := range []string{"one ", "two ", "three"} {
		if n, err := gc.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("corked write: %d, %v", n, err)
		}
	}
	peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := peer.Read(buf); n != 0 || err == nil {
		t.Fatalf("read %q (%v) before the flush", buf[:n], err)
	}
	peer.SetReadDeadline(time.Time{})
	got := make(chan string, 2)
	go func() {
		for range 2 {
			n, _ := peer.Read(buf)
			got <- string(buf[:n])
		}
	}()
	if err := gc.flush(); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "one two three" {
		t.Fatalf("after the flush the peer read %q in one read, want %q", s, "one two three")
	}
	if _, err := gc.Write([]byte("four")); err != nil { // uncorked: at once
		t.Fatal(err)
	}
	if s := <-got; s != "four" {
		t.Fatalf("uncorked write: peer read %q", s)
	}
	if err := gc.flush(); err != nil { // not corked: nothing to do
		t.Fatal(err)
	}
}
