package dns

import (
	"context"
	"errors"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// checkGoroutines fails t if, after a grace period, more goroutines run
// than before.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startServer runs a Server on 127.0.0.1:0 until the test ends.
func startServer(t *testing.T) *Server {
	t.Helper()
	before := runtime.NumGoroutine()
	h := testHandler(t, testDir(t))
	s, err := Listen(t.Context(), "127.0.0.1:0", h, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.UDPAddr().Port() != s.TCPAddr().Port() || s.UDPAddr().Port() == 0 {
		t.Fatalf("ports: udp %v tcp %v", s.UDPAddr(), s.TCPAddr())
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
		checkGoroutines(t, before)
	})
	return s
}

func TestServerUDPAndTCP(t *testing.T) {
	s := startServer(t)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			c := &mdns.Client{Net: network, Timeout: 5 * time.Second}
			addr := s.UDPAddr().String()
			tests := []struct {
				q     *mdns.Msg
				rcode int
				want  string
			}{
				{query("node1.mycluster.pvc.", mdns.TypeA), mdns.RcodeSuccess, "240.1.0.1"},
				{query("2.0.1.240.in-addr.arpa.", mdns.TypePTR), mdns.RcodeSuccess, "node2.mycluster.pvc."},
				{query("nobody.mycluster.pvc.", mdns.TypeA), mdns.RcodeNameError, ""},
				{query("example.com.", mdns.TypeA), mdns.RcodeRefused, ""},
			}
			for _, tt := range tests {
				// The server must answer whether or not the client waits
				// for the reply before the next query.
				r, _, err := c.ExchangeContext(t.Context(), tt.q, addr)
				if err != nil {
					t.Fatalf("%v: %v", tt.q.Question[0], err)
				}
				got := ""
				if len(r.Answer) == 1 {
					switch rr := r.Answer[0].(type) {
					case *mdns.A:
						got = rr.A.String()
					case *mdns.PTR:
						got = rr.Ptr
					}
				}
				if r.Rcode != tt.rcode || got != tt.want {
					t.Errorf("%v: %s %q, want %s %q", tt.q.Question[0], mdns.RcodeToString[r.Rcode], got,
						mdns.RcodeToString[tt.rcode], tt.want)
				}
			}
		})
	}
}

// One real resolver tool against the server: dig (package dnsutils).
func TestServerDig(t *testing.T) {
	dig, err := exec.LookPath("dig")
	if err != nil {
		t.Skip("dig not installed (Debian package dnsutils)")
	}
	s := startServer(t)
	port := strconv.Itoa(int(s.UDPAddr().Port()))
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"NODE1.mycluster.pvc", "A"}, "240.1.0.1"},
		{[]string{"-x", "240.1.3.4"}, "web-3.mycluster.pvc."},
		{[]string{"+tcp", "node2.mycluster.pvc", "A"}, "240.1.0.2"},
	}
	for _, tt := range tests {
		full := append([]string{"@127.0.0.1", "-p", port, "+short", "+time=3", "+tries=1"}, tt.args...)
		out, err := exec.CommandContext(t.Context(), dig, full...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", full, err, out)
		}
		if got := strings.TrimSpace(string(out)); got != tt.want {
			t.Errorf("dig %v = %q, want %q", tt.args, got, tt.want)
		}
	}
	out, err := exec.CommandContext(t.Context(), dig, "@127.0.0.1", "-p", port, "+time=3", "+tries=1",
		"nobody.mycluster.pvc").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "status: NXDOMAIN") || !strings.Contains(string(out), "flags: qr aa rd") {
		t.Errorf("dig nobody: %v\n%s", err, out)
	}
}

func TestServerRunOnceAndClose(t *testing.T) {
	before := runtime.NumGoroutine()
	h := testHandler(t, testDir(t))
	s, err := Listen(t.Context(), "127.0.0.1:0", h, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel() // Run with an ended context returns at once and cleanly.
	if err := s.Run(ctx); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := s.Run(t.Context()); !errors.Is(err, ErrRunning) {
		t.Fatalf("second Run: %v, want ErrRunning", err)
	}
	// The port is free again.
	s2, err := Listen(t.Context(), s.UDPAddr().String(), h, nil)
	if err != nil {
		t.Fatalf("listen again on %v: %v", s.UDPAddr(), err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(t.Context(), "127.0.0.1:notaport", h, nil); err == nil {
		t.Fatal("bad port: no error")
	}
	checkGoroutines(t, before)
}
