package dns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// Errors of the server.
var (
	ErrRunning = errors.New("dns server already ran")
)

// ShutdownTimeout bounds how long Run waits, once its context ends, for
// queries in flight and open TCP connections to finish.
const ShutdownTimeout = 3 * time.Second

// Server serves a Handler over UDP and TCP on one address and port. Create
// it with Listen, run it once with Run; Close releases the sockets of a
// Server that is never run.
type Server struct {
	handler mdns.Handler
	log     *slog.Logger
	udp     net.PacketConn
	tcp     net.Listener
	ran     atomic.Bool
}

// Listen binds UDP and TCP sockets on addr ("240.1.0.7:53", or
// "127.0.0.1:0" in tests: port 0 picks one free port for both) and returns
// the Server that will serve h on them. To listen on the peer's virtual
// address, the TUN device must carry that address first. log may be nil.
func Listen(ctx context.Context, addr string, h mdns.Handler, log *slog.Logger) (*Server, error) {
	if h == nil {
		return nil, fmt.Errorf("dns listen %s: no handler", addr)
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns listen %s: %w", addr, err)
	}
	var lc net.ListenConfig
	// With port 0 the kernel picks the UDP port; TCP then asks for the
	// same one, which another process may hold: try a few times.
	for try := 0; ; try++ {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, fmt.Errorf("dns listen udp %s: %w", addr, err)
		}
		taddr := addr
		if port == "0" {
			taddr = net.JoinHostPort(host, strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port))
		}
		l, err := lc.Listen(ctx, "tcp", taddr)
		if err == nil {
			return &Server{handler: h, log: log, udp: pc, tcp: l}, nil
		}
		pc.Close()
		if port != "0" || try >= 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("dns listen tcp %s: %w", taddr, err)
		}
	}
}

// UDPAddr returns the bound UDP address.
func (s *Server) UDPAddr() netip.AddrPort {
	return s.udp.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TCPAddr returns the bound TCP address.
func (s *Server) TCPAddr() netip.AddrPort {
	return s.tcp.Addr().(*net.TCPAddr).AddrPort()
}

// Close releases the sockets of a Server that was never run. Run closes
// them itself.
func (s *Server) Close() error {
	if s.ran.Swap(true) {
		return nil
	}
	return errors.Join(s.udp.Close(), s.tcp.Close())
}

// unit is one miekg/dns server (UDP or TCP) run by Run.
type unit struct {
	net     string // "udp" or "tcp"
	srv     *mdns.Server
	started chan struct{} // closed once it serves; Shutdown is safe after
	done    chan struct{} // closed when ActivateAndServe returned
	err     error         // ActivateAndServe's error; read after done
}

// Run serves until ctx ends or a socket fails, then shuts both servers
// down, waits for every goroutine it started and closes the sockets. It
// returns nil when ctx ended, else the socket's error. It runs once.
func (s *Server) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return ErrRunning
	}
	defer s.udp.Close()
	defer s.tcp.Close()
	units := []*unit{
		{net: "udp", srv: &mdns.Server{PacketConn: s.udp, Handler: s.handler, UDPSize: EDNSSize}},
		{net: "tcp", srv: &mdns.Server{Listener: s.tcp, Handler: s.handler}},
	}
	exited := make(chan struct{}, len(units))
	var wg sync.WaitGroup
	for _, u := range units {
		u.started = make(chan struct{})
		u.done = make(chan struct{})
		u.srv.NotifyStartedFunc = func() { close(u.started) }
		wg.Go(func() {
			u.err = u.srv.ActivateAndServe()
			close(u.done)
			exited <- struct{}{}
		})
	}
	defer wg.Wait()
	// Shut down only servers that started or ended: a Shutdown that comes
	// before ActivateAndServe is refused and would leave it running.
	for _, u := range units {
		select {
		case <-u.started:
		case <-u.done:
		}
	}
	s.log.Info("dns serving", "udp", s.UDPAddr(), "tcp", s.TCPAddr())
	select {
	case <-ctx.Done():
	case <-exited:
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	var errs []error
	for _, u := range units {
		select {
		case <-u.done:
			if u.err != nil {
				errs = append(errs, fmt.Errorf("dns serve %s %s: %w", u.net, s.UDPAddr(), u.err))
			}
		default:
			// ShutdownContext's error is a timeout of the drain: the
			// goroutines still end (their sockets are closed below).
			_ = u.srv.ShutdownContext(sctx)
		}
	}
	s.udp.Close()
	s.tcp.Close()
	return errors.Join(errs...)
}
