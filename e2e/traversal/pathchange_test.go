package traversal

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

// stream is an application TCP connection over the overlay that sends
// paced, checksummed chunks and records, on the receiving side, every
// gap between two reads.
type stream struct {
	mu      sync.Mutex
	gaps    []gap // receive gaps longer than 50 ms
	last    time.Time
	recv    int64
	sent    int64
	werr    error
	rerr    error
	sumSent [32]byte
	sumRecv [32]byte
	done    chan struct{}
}

type gap struct {
	at  time.Time
	len time.Duration
}

const chunk = 8 << 10 // every 4 ms: 16 Mbit/s

func startStream(t *testing.T, from, to *netlab.Host, dst netip.Addr, stop <-chan struct{}) *stream {
	t.Helper()
	s := &stream{done: make(chan struct{})}
	var ln net.Listener
	if err := to.Do(func() (err error) { ln, err = net.Listen("tcp4", ":0"); return }); err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(dst, uint16(port)).String(), 10*time.Second)
		return
	}); err != nil {
		ln.Close()
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // receiver
		defer wg.Done()
		h := sha256.New()
		buf := make([]byte, 64<<10)
		for {
			n, err := srv.Read(buf)
			now := time.Now()
			s.mu.Lock()
			if n > 0 {
				if !s.last.IsZero() && now.Sub(s.last) > 50*time.Millisecond {
					s.gaps = append(s.gaps, gap{s.last, now.Sub(s.last)})
				}
				s.last = now
				s.recv += int64(n)
				h.Write(buf[:n])
			}
			s.mu.Unlock()
			if err != nil {
				if err != io.EOF {
					s.rerr = err
				}
				copy(s.sumRecv[:], h.Sum(nil))
				srv.Close()
				return
			}
		}
	}()
	go func() { // sender
		defer wg.Done()
		h := sha256.New()
		buf := make([]byte, chunk)
		tick := time.NewTicker(4 * time.Millisecond)
		defer tick.Stop()
		for i := uint64(0); ; i++ {
			select {
			case <-stop:
				copy(s.sumSent[:], h.Sum(nil))
				s.werr = c.(*net.TCPConn).CloseWrite()
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(buf, i)
			_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(buf); err != nil {
				s.werr = err
				c.Close()
				return
			}
			h.Write(buf)
			s.mu.Lock()
			s.sent += chunk
			s.mu.Unlock()
		}
	}()
	go func() { wg.Wait(); c.Close(); close(s.done) }()
	return s
}

// longest returns the longest receive gap that overlaps [from, to).
func (s *stream) longest(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var m time.Duration
	for _, g := range s.gaps {
		if g.at.Add(g.len).After(from) && g.at.Before(to) && g.len > m {
			m = g.len
		}
	}
	return m
}

func waitPathKind(t *testing.T, n *vcluster.Node, peer string, within time.Duration, ok func(string) bool) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < within {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		p, err := n.Peer(ctx, peer)
		cancel()
		if err == nil {
			last = p.Path
			if ok(p.Path) {
				return p.Path, time.Since(start)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return last, time.Since(start)
}

func is(kind string) func(string) bool { return func(p string) bool { return p == kind } }

// TestPathChanges keeps an application TCP stream running between two
// cone sites while its path changes under it: relay (or a TCP path) → punched when UDP
// between the sites is unblocked; after `conntrack -F` on the target's
// router; punched → relay when a firewall drops the sites' UDP again; and
// back. The stream must never see an error and every byte must arrive;
// the longest receive gap of each phase is reported.
func TestPathChanges(t *testing.T) {
	netlab.RequireTools(t, "conntrack", "iptables")
	c, a, b := startPair(t, netlab.Cone, netlab.Cone, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ra, rb := c.Lab.Site("s1").Router, c.Lab.Site("s2").Router
	bPub := c.Lab.Site("s2").PublicAddr.String()
	block := func(op string) {
		t.Helper()
		for _, dir := range []string{"-d", "-s"} {
			if out, err := ra.Run(ctx, "iptables", op, "FORWARD", "-p", "udp", dir, bPub, "-j", "DROP"); err != nil {
				t.Fatalf("iptables %s: %v\n%s", op, err, out)
			}
		}
	}
	// UDP between the two sites is blocked: only the relay can carry.
	block("-I")

	stop := make(chan struct{})
	var stopOnce sync.Once
	stopStream := func() { stopOnce.Do(func() { close(stop) }) }
	defer stopStream()
	t0 := time.Now()
	s := startStream(t, a.Host, b.Host, b.Status.VirtualIP, stop)
	t.Logf("stream p1 → p2 connected over the overlay in %v", time.Since(t0).Round(time.Millisecond))
	// Not UDP: the relay, or a TCP path (Traversing-TCP crosses two cone
	// sites) once the TCP techniques have run.
	notUDP := func(p string) bool { return p == "relay" || p == "ttcp" || p == "tcp-punch" }
	if p, _ := waitPathKind(t, a, "p2", 3*time.Second, func(string) bool { return false }); !notUDP(p) {
		t.Fatalf("path with UDP blocked between the sites: %q, want relay or a TCP path", p)
	}

	// Phase 1: relay → punched.
	p1 := time.Now()
	block("-D")
	p, took := waitPathKind(t, a, "p2", 25*time.Second, is("punched"))
	if p != "punched" {
		t.Fatalf("after UDP was unblocked: path %q after %v, want punched", p, took)
	}
	time.Sleep(2 * time.Second)
	t.Logf("relay or TCP → punched: %v after UDP was unblocked", took.Round(time.Millisecond))

	// Phase 2: conntrack -F on b's router (its NAT forgets the mapping).
	p2 := time.Now()
	if out, err := rb.Run(ctx, "conntrack", "-F"); err != nil {
		t.Fatalf("conntrack -F: %v\n%s", err, out)
	}
	time.Sleep(4 * time.Second)
	pAfter, _ := waitPathKind(t, a, "p2", 15*time.Second, func(p string) bool { return p == "punched" || p == "relay" })
	t.Logf("conntrack -F on b's router: path now %s", pAfter)

	// Phase 3: a firewall drops the sites' UDP: punched → relay, and
	// then possibly a TCP path (Traversing-TCP crosses two cone sites).
	show := func(when string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		pa, _ := a.Peer(ctx, "p2")
		pb, _ := b.Peer(ctx, "p1")
		t.Logf("%s: p1 → p2 %s %s; p2 → p1 %s %s", when, pa.Path, pa.Remote, pb.Path, pb.Remote)
	}
	show("before the drop")
	p3 := time.Now()
	block("-I")
	p, took = waitPathKind(t, a, "p2", 10*time.Second, notUDP)
	if !notUDP(p) {
		t.Fatalf("with UDP dropped again: path %q after %v, want relay or a TCP path", p, took)
	}
	show("after the drop")
	time.Sleep(3 * time.Second)
	pNow, _ := waitPathKind(t, a, "p2", time.Second, func(string) bool { return false })
	t.Logf("punched → %s: %v after UDP was dropped; 3 s later: %s", p, took.Round(time.Millisecond), pNow)

	// Phase 4: unblocked again: back to punched.
	p4 := time.Now()
	block("-D")
	p, took = waitPathKind(t, a, "p2", 25*time.Second, is("punched"))
	if p != "punched" {
		t.Fatalf("after UDP was unblocked again: path %q after %v, want punched", p, took)
	}
	time.Sleep(2 * time.Second)
	t.Logf("→ punched again: %v", took.Round(time.Millisecond))

	stopStream()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream did not end within 30 s of its sender closing")
	}
	end := time.Now()
	up1, flush, down, up2 := s.longest(p1, p2), s.longest(p2, p3), s.longest(p3, p4), s.longest(p4, end)
	s.mu.Lock()
	for _, g := range s.gaps {
		t.Logf("receive gap of %v at +%v", g.len.Round(time.Millisecond), g.at.Sub(t0).Round(time.Millisecond))
	}
	t.Logf("phases began at +%v, +%v, +%v, +%v", p1.Sub(t0).Round(time.Millisecond), p2.Sub(t0).Round(time.Millisecond), p3.Sub(t0).Round(time.Millisecond), p4.Sub(t0).Round(time.Millisecond))
	s.mu.Unlock()
	if s.werr != nil || s.rerr != nil {
		t.Fatalf("the application saw an error: write %v, read %v", s.werr, s.rerr)
	}
	if s.recv != s.sent || s.sumRecv != s.sumSent {
		t.Fatalf("received %d of %d bytes, checksum match %v", s.recv, s.sent, s.sumRecv == s.sumSent)
	}
	t.Logf("stream: %d MiB in %v, no error, SHA-256 equal; longest gaps: upgrade %v, conntrack -F %v, fallback %v, upgrade again %v",
		s.sent>>20, time.Since(t0).Round(time.Second), up1, flush, down, up2)
	if down > 5*time.Second {
		t.Errorf("fallback stalled the stream %v (more than 5 s)", down)
	}
	if t.Failed() {
		for _, n := range []*vcluster.Node{a, b} {
			t.Logf("pvcd %s's path log:\n%s", n.Name, grepLines(n.Proc.Output(), "path", "ice"))
		}
	}
}

// grepLines returns the lines of out that contain any of words.
func grepLines(out string, words ...string) string {
	var b strings.Builder
	for _, l := range strings.Split(out, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				b.WriteString(l + "\n")
				break
			}
		}
	}
	return b.String()
}
