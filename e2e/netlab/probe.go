package netlab

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Echo is a UDP and TCP server in a lab host that answers every datagram
// and every connection with the source address it saw ("seen IP:PORT"),
// and records who reached it.
type Echo struct {
	Host *Host
	Port uint16
	udp  *net.UDPConn
	tcp  *net.TCPListener

	mu   sync.Mutex
	seen []contact // in arrival order
	wg   sync.WaitGroup
}

// StartEcho starts an echo server on h's addr:port (UDP and TCP; zero
// addr: all of h's addresses). Close stops it.
func StartEcho(h *Host, addr netip.Addr, port uint16) (*Echo, error) {
	e := &Echo{Host: h, Port: port}
	laddr := netip.AddrPortFrom(addr, port)
	if !addr.IsValid() {
		laddr = netip.AddrPortFrom(netip.IPv4Unspecified(), port)
	}
	err := h.Do(func() error {
		var err error
		if e.udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(laddr)); err != nil {
			return err
		}
		if e.tcp, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(laddr)); err != nil {
			e.udp.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("echo on %s %v: %w", h.Name, laddr, err)
	}
	e.wg.Add(2)
	go e.serveUDP()
	go e.serveTCP()
	return e, nil
}

type contact struct {
	tcp  bool
	from netip.AddrPort
}

func (e *Echo) note(tcp bool, a netip.AddrPort) {
	e.mu.Lock()
	e.seen = append(e.seen, contact{tcp, a})
	e.mu.Unlock()
}

func (e *Echo) serveUDP() {
	defer e.wg.Done()
	buf := make([]byte, 2048)
	for {
		_, from, err := e.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		e.note(false, from)
		_, _ = e.udp.WriteToUDPAddrPort([]byte("seen "+from.String()+"\n"), from)
	}
}

func (e *Echo) serveTCP() {
	defer e.wg.Done()
	for {
		c, err := e.tcp.AcceptTCP()
		if err != nil {
			return
		}
		from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		e.note(true, from)
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("seen " + from.String() + "\n"))
		c.Close()
	}
}

// Seen returns the sources that reached the server so far.
func (e *Echo) Seen() []netip.AddrPort {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]netip.AddrPort, len(e.seen))
	for i, c := range e.seen {
		out[i] = c.from
	}
	return out
}

// seenProto reports whether UDP and TCP from addr reached the server.
func (e *Echo) seenProto(addr netip.Addr) (udp, tcp bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.seen {
		if c.from.Addr() == addr {
			udp = udp || !c.tcp
			tcp = tcp || c.tcp
		}
	}
	return udp, tcp
}

// SeenFrom reports whether any datagram or connection came from addr.
func (e *Echo) SeenFrom(addr netip.Addr) bool {
	for _, s := range e.Seen() {
		if s.Addr() == addr {
			return true
		}
	}
	return false
}

// Close stops the server and waits for its goroutines.
func (e *Echo) Close() error {
	err := errors.Join(e.udp.Close(), e.tcp.Close())
	e.wg.Wait()
	return err
}

// UDPSocket opens a UDP socket in h bound to port (0: any). The socket
// stays in h's namespace.
func UDPSocket(h *Host, port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{Port: int(port)})
		return err
	})
	return c, err
}

// AskUDP sends one datagram from c to an Echo at dst and returns the
// source address the echo saw. It retries a few times within timeout (the
// lab may be lossy); no answer is an error wrapping ErrNoAnswer.
func AskUDP(c *net.UDPConn, dst netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 256)
	for attempt := 0; time.Now().Before(deadline); attempt++ {
		if _, err := c.WriteToUDPAddrPort([]byte("probe"), dst); err != nil {
			return netip.AddrPort{}, err
		}
		wait := time.Now().Add(timeout / 4)
		if wait.After(deadline) {
			wait = deadline
		}
		_ = c.SetReadDeadline(wait)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				break // timed out: send again
			}
			if from.Addr().Unmap() != dst.Addr() || from.Port() != dst.Port() {
				continue
			}
			return parseSeen(string(buf[:n]))
		}
	}
	return netip.AddrPort{}, fmt.Errorf("%w: UDP %v after %v", ErrNoAnswer, dst, timeout)
}

// ErrNoAnswer is wrapped when a probe got no answer in time.
var ErrNoAnswer = errors.New("no answer")

// AskTCP connects from h to an Echo at dst and returns the source address
// the echo saw. A connection that neither completes nor is refused within
// timeout is an error wrapping ErrNoAnswer.
func AskTCP(h *Host, dst netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", dst.String(), timeout)
		return err
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return netip.AddrPort{}, fmt.Errorf("%w: TCP %v: %v", ErrNoAnswer, dst, err)
		}
		return netip.AddrPort{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("TCP %v: read: %w", dst, err)
	}
	return parseSeen(line)
}

func parseSeen(s string) (netip.AddrPort, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), "seen ")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("unexpected echo answer %q", s)
	}
	return netip.ParseAddrPort(rest)
}

// Transfer sends size bytes over TCP from host from to dst:port (0: any
// port) inside host to, checks them with SHA-256 and returns the
// throughput in Mbit/s. The sockets are the kernel's, in the hosts'
// namespaces: over an overlay address the bytes cross TUN devices and
// WireGuard like any application's.
func Transfer(from, to *Host, dst netip.Addr, port uint16, size int) (float64, error) {
	var ln net.Listener
	if err := to.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, port).String())
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	sums := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sums <- nil
			return
		}
		defer c.Close()
		h := sha256.New()
		_, _ = io.Copy(h, c)
		sums <- h.Sum(nil)
	}()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		ln.Close()
		<-sums
		return 0, err
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	h := sha256.New()
	start := time.Now()
	for sent := 0; sent < size; sent += len(data) {
		chunk := data
		if size-sent < len(chunk) {
			chunk = chunk[:size-sent]
		}
		if _, err := c.Write(chunk); err != nil {
			c.Close()
			<-sums
			return 0, fmt.Errorf("transfer to %v: %w", dst, err)
		}
		h.Write(chunk)
	}
	c.Close()
	if got := <-sums; !bytes.Equal(got, h.Sum(nil)) {
		return 0, fmt.Errorf("transfer to %v: SHA-256 mismatch", dst)
	}
	return float64(size) * 8 / time.Since(start).Seconds() / 1e6, nil
}

// Exchange sends size random bytes each way over a and b (the two ends of
// one connection) at once, checks their SHA-256 on arrival, and gives up
// after 10 s.
func Exchange(a, b net.Conn, size int) error {
	one := func(w, r net.Conn) error {
		data := make([]byte, size)
		_, _ = rand.Read(data)
		want := sha256.Sum256(data)
		errc := make(chan error, 1)
		go func() {
			_, err := w.Write(data)
			errc <- err
		}()
		h := sha256.New()
		if _, err := io.CopyN(h, r, int64(size)); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if err := <-errc; err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if !bytes.Equal(h.Sum(nil), want[:]) {
			return errors.New("checksum mismatch")
		}
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	errc := make(chan error, 2)
	go func() { errc <- one(a, b) }()
	go func() { errc <- one(b, a) }()
	return errors.Join(<-errc, <-errc)
}
