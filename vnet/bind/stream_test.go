package bind

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// streamPair connects a and b by a loopback TCP connection and adds it as
// a stream on both sides (a names b; b learns a's name from the hello).
func streamPair(t *testing.T, a, b *node, kind PathKind) (nameA, nameB string, errA, errB error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			errB = err
			return
		}
		nameB, errB = b.bind.AddStream(c, kind, "")
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nameA, errA = a.bind.AddStream(c, kind, b.name)
	wg.Wait()
	return
}

func TestStreamCarriesWireGuard(t *testing.T) {
	r, a, b := twoNodes(t)
	a.addPeer(t, b)
	b.addPeer(t, a)
	relayOff := func() { r.mu.Lock(); r.binds = map[string]*Bind{}; r.mu.Unlock() }
	relayOff() // only the stream can carry anything

	nameA, nameB, errA, errB := streamPair(t, a, b, PathTTCP)
	if errA != nil || errB != nil {
		t.Fatalf("AddStream: %v / %v", errA, errB)
	}
	if nameA != "b" || nameB != "a" {
		t.Fatalf("names: a sees %q, b sees %q", nameA, nameB)
	}
	if got := pingThrough(a, b, 20, 20*time.Millisecond); got < 18 {
		t.Fatalf("%d of 20 pings arrived over the stream", got)
	}
	sa := pathOf(a.bind, "b")
	if sa.Path != PathTTCP || sa.TxStream == 0 || sa.RxStream == 0 {
		t.Fatalf("a's path to b: %+v", sa)
	}
	if sb := pathOf(b.bind, "a"); sb.Path != PathTTCP {
		t.Fatalf("b's path to a: %+v", sb)
	}

	// The stream breaks: the relay takes over.
	r.mu.Lock()
	r.binds = map[string]*Bind{"a": a.bind, "b": b.bind}
	r.mu.Unlock()
	a.bind.mu.Lock()
	s := a.bind.peers["b"].stream.Load()
	a.bind.mu.Unlock()
	s.c.Close()
	deadline := time.Now().Add(3 * time.Second)
	for pathOf(a.bind, "b").Path != PathRelay || pathOf(b.bind, "a").Path != PathRelay {
		if time.Now().After(deadline) {
			t.Fatalf("paths after the stream broke: %+v / %+v", pathOf(a.bind, "b"), pathOf(b.bind, "a"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := pingThrough(a, b, 10, 20*time.Millisecond); got < 8 {
		t.Fatalf("%d of 10 pings arrived over the relay after the stream broke", got)
	}
}

func TestStreamAuthentication(t *testing.T) {
	_, a, b := twoNodes(t)

	// a expects c but reaches b: refused on both sides.
	_, _, errA, errB := streamPair(t, a, &node{name: "c", bind: b.bind}, PathTCPPunch)
	if !errors.Is(errA, ErrStreamAuth) && !errors.Is(errB, ErrStreamAuth) {
		t.Fatalf("a wanted c, got b: errors %v / %v", errA, errB)
	}
	// b's signatures stop verifying: a refuses the stream.
	b.auth.off.Store(true)
	a.auth.off.Store(true)
	_, _, errA, errB = streamPair(t, a, b, PathTCPPunch)
	if !errors.Is(errA, ErrStreamAuth) || !errors.Is(errB, ErrStreamAuth) {
		t.Fatalf("forged proofs accepted: %v / %v", errA, errB)
	}
	if a.bind.HasStream("b") || b.bind.HasStream("a") {
		t.Fatal("a refused stream was kept")
	}
	// Garbage instead of a hello.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			conn.Write([]byte{0, 5, 'h', 'e', 'l', 'l', 'o'})
			time.Sleep(100 * time.Millisecond)
			conn.Close()
		}
	}()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.bind.AddStream(conn, PathDirect, ""); err == nil {
		t.Fatal("garbage hello accepted")
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 3, 1, 2, 3})
	f.Add([]byte{0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		buf := make([]byte, 64)
		n, err := readFrame(&sliceReader{b: in}, buf)
		if err == nil && (n > len(buf) || n != int(in[0])<<8|int(in[1])) {
			t.Fatalf("frame of %d from %x", n, in)
		}
	})
}

type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, errors.New("EOF")
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
