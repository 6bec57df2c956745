// Package tcppunch opens a TCP connection between two peers behind NATs or
// firewalls by TCP simultaneous open ("TCP hole punching"): both bind the
// same local port and connect to the other's predicted public endpoint at
// about the same moment (the caller synchronises them, e.g. through broker
// signals). Each side's SYN opens its own NAT or firewall state, so the
// other side's SYN (or SYN/ACK) is let in; the two SYNs cross and the
// kernel completes a simultaneous open, or one side's listener on the same
// port accepts the other's SYN. The result is a plain net.Conn; framing and
// peer authentication belong to the caller.
//
// It works across endpoint-independent (port-preserving) NATs and stateful
// firewalls, not across NATs that pick a new port per destination (Linux
// MASQUERADE --random-fully): docs/traversal.md ("TCP simultaneous open")
// and Crosses hold the measured table.
package tcppunch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config tunes Punch. The zero value works.
type Config struct {
	// Attempt bounds one connect (the kernel retransmits the SYN within it,
	// after 1 s); then a fresh socket sends a new SYN. 0: 2 s.
	Attempt time.Duration
	// Pause is the wait after a connect that failed at once (refused,
	// endpoint busy) before the next one. 0: 100 ms.
	Pause time.Duration
	// OpenTTL, when not 0, sends the first attempt's SYN with this TTL,
	// meant to open this side's NAT or firewall without reaching the
	// peer's router (which might answer with a RST); that attempt lasts
	// 200 ms and later attempts use the normal TTL. Where no hop lies
	// between the two routers (as in the lab) it expires in the peer's
	// router and breaks router-to-router pairs: see Crosses. 0: none.
	OpenTTL int
}

// ErrTimeout is wrapped when the context ends before a connection.
var ErrTimeout = errors.New("tcp simultaneous open: no connection")

// Punch runs Config{}.Punch.
func Punch(ctx context.Context, local, remote netip.AddrPort) (net.Conn, error) {
	return Config{}.Punch(ctx, local, remote)
}

// Punch binds local (address and port; the port must be the one the peer
// predicted) and connects to remote repeatedly until a connection is
// established, by its own connect or by the peer's SYN arriving at a
// listener on the same port, or until ctx ends. It must run in the network
// namespace of the connection: sockets are made on the calling goroutine.
func (c Config) Punch(ctx context.Context, local, remote netip.AddrPort) (net.Conn, error) {
	if !local.Addr().Is4() || local.Port() == 0 || !remote.Addr().Is4() || remote.Port() == 0 {
		return nil, fmt.Errorf("tcp punch %v→%v: want IPv4 endpoints with ports", local, remote)
	}
	if c.Attempt <= 0 {
		c.Attempt = 2 * time.Second
	}
	if c.Pause <= 0 {
		c.Pause = 100 * time.Millisecond
	}
	lc := net.ListenConfig{Control: reuse(0)}
	ln, err := lc.Listen(ctx, "tcp4", local.String())
	if err != nil {
		return nil, fmt.Errorf("tcp punch: listen %v: %w", local, err)
	}
	accepted := make(chan net.Conn, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			if ap, ok := conn.RemoteAddr().(*net.TCPAddr); !ok || ap.AddrPort() != remote {
				conn.Close() // someone else: not the peer
				continue
			}
			select {
			case accepted <- conn:
			default:
				conn.Close()
			}
		}
	}()
	stop := func() {
		ln.Close()
		wg.Wait()
	}
	laddr := net.TCPAddrFromAddrPort(local)
	var last error
	for try := 0; ; try++ {
		attempt, ttl := c.Attempt, 0
		if try == 0 && c.OpenTTL > 0 {
			attempt, ttl = 200*time.Millisecond, c.OpenTTL
		}
		actx, cancel := context.WithTimeout(ctx, attempt)
		d := net.Dialer{LocalAddr: laddr, Control: reuse(ttl)}
		start := time.Now()
		conn, err := d.DialContext(actx, "tcp4", remote.String())
		cancel()
		if err == nil {
			if ttl > 0 {
				_ = setTTL(conn, -1) // the route's default again
			}
			stop()
			select {
			case a := <-accepted: // cannot be the same 4-tuple; keep ours
				a.Close()
			default:
			}
			return conn, nil
		}
		last = err
		// The peer's SYN may have been accepted meanwhile (then our own
		// connect finds the 4-tuple taken).
		wait := time.Duration(0)
		if time.Since(start) < c.Pause {
			wait = c.Pause
		}
		select {
		case a := <-accepted:
			stop()
			return a, nil
		case <-ctx.Done():
			stop()
			select {
			case a := <-accepted:
				return a, nil
			default:
			}
			return nil, fmt.Errorf("%w: %v→%v: %w (last connect: %v)", ErrTimeout, local, remote, ctx.Err(), last)
		case <-time.After(wait):
		}
	}
}

// reuse sets SO_REUSEADDR and SO_REUSEPORT (so that the listener and the
// connecting sockets share the port) and, when ttl > 0, the IP TTL.
func reuse(ttl int) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			for _, o := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o, 1); serr != nil {
					return
				}
			}
			if ttl > 0 {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

func setTTL(conn net.Conn, ttl int) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, ttl)
	}); err != nil {
		return err
	}
	return serr
}
