package tcppunch

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/brokertest"
	"github.com/pvc-project/pvc/e2e/netlab"
)

func freePort(t *testing.T) netip.AddrPort {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

type result struct {
	c   net.Conn
	err error
}

// Both ends punch on loopback at once: the kernel completes the crossing
// SYNs (or one listener accepts), and both ends hold the same connection.
func TestPunchLoopback(t *testing.T) {
	defer brokertest.CheckGoroutines(t, runtime.NumGoroutine())
	a, b := freePort(t), freePort(t)
	ra, rb := make(chan result, 1), make(chan result, 1)
	go func() { c, err := Punch(t.Context(), a, b); ra <- result{c, err} }()
	go func() { c, err := Punch(t.Context(), b, a); rb <- result{c, err} }()
	x, y := <-ra, <-rb
	if x.err != nil || y.err != nil {
		t.Fatal(x.err, y.err)
	}
	defer x.c.Close()
	defer y.c.Close()
	if x.c.LocalAddr().String() != y.c.RemoteAddr().String() || x.c.RemoteAddr().String() != y.c.LocalAddr().String() {
		t.Errorf("different connections: %v-%v and %v-%v", x.c.LocalAddr(), x.c.RemoteAddr(), y.c.LocalAddr(), y.c.RemoteAddr())
	}
	if err := netlab.Exchange(x.c, y.c, 1<<20); err != nil {
		t.Fatal(err)
	}
}

// A peer that only dials (no punching) reaches the listener side of Punch.
func TestPunchAcceptsPlainDial(t *testing.T) {
	a, b := freePort(t), freePort(t)
	ra := make(chan result, 1)
	go func() { c, err := Punch(t.Context(), a, b); ra <- result{c, err} }()
	var y net.Conn
	for end := time.Now().Add(3 * time.Second); y == nil && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(b)}
		y, _ = d.Dial("tcp4", a.String())
	}
	if y == nil {
		t.Fatal("plain dial never connected")
	}
	defer y.Close()
	x := <-ra
	if x.err != nil {
		t.Fatal(x.err)
	}
	defer x.c.Close()
	if err := netlab.Exchange(x.c, y, 64<<10); err != nil {
		t.Fatal(err)
	}
}

func TestPunchTimesOut(t *testing.T) {
	// Nobody at the other end, which refuses: attempts repeat until the
	// context ends.
	defer brokertest.CheckGoroutines(t, runtime.NumGoroutine())
	a, b := freePort(t), freePort(t)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Punch(ctx, a, b)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestPunchBadEndpoints(t *testing.T) {
	good := netip.MustParseAddrPort("127.0.0.1:9")
	for _, ap := range []netip.AddrPort{{}, netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:9")} {
		if _, err := Punch(t.Context(), ap, good); err == nil {
			t.Errorf("local %v accepted", ap)
		}
		if _, err := Punch(t.Context(), good, ap); err == nil {
			t.Errorf("remote %v accepted", ap)
		}
	}
}
