package bind

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// A stream is a TCP path to a peer (Traversing-TCP, TCP simultaneous open,
// or a plain TCP connection to a peer that accepts them). It carries
// WireGuard datagrams, each framed with a 2-byte big-endian length. Before
// it carries anything, each side proves who it is: both send a ping with a
// fresh nonce, then a pong over the other's nonce signed with their
// signing key (the same probe messages as on UDP), so a stream can neither
// be claimed by someone else nor replayed. Streams are used when a peer has
// no direct UDP path; the relay is used when it has neither.
type stream struct {
	kind   PathKind
	remote netip.AddrPort
	c      net.Conn
	since  time.Time
	ep     *Endpoint

	wmu  sync.Mutex // guards wbuf and writes
	wbuf []byte

	closed atomic.Bool
}

// StreamHandshakeTimeout bounds the authentication of a new stream.
const StreamHandshakeTimeout = 5 * time.Second

// streamWriteTimeout bounds one write: a stalled TCP path must not stall
// WireGuard; it is dropped and the relay takes over.
const streamWriteTimeout = 2 * time.Second

// ErrStreamAuth is returned by AddStream when the other side does not prove
// to be the expected (or any known) peer.
var ErrStreamAuth = errors.New("stream: peer not authenticated")

// AddStream authenticates c as a path to a peer and uses it when the peer
// has no direct UDP path. expect is the peer's name, or "" on an accepted
// connection (the peer then names itself, and must prove it). It returns
// the peer's name. On error, c is closed. The Bind owns c afterwards.
func (b *Bind) AddStream(c net.Conn, kind PathKind, expect string) (string, error) {
	peer, err := b.streamHandshake(c, expect)
	if err != nil {
		c.Close()
		return "", err
	}
	b.mu.Lock()
	if !b.opened {
		b.mu.Unlock()
		c.Close()
		return "", net.ErrClosed
	}
	ep := b.peerLocked(peer)
	q, closed := b.relayq, b.closed
	b.mu.Unlock()
	remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	s := &stream{kind: kind, remote: netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), c: c, since: b.cfg.Now(), ep: ep}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAlivePeriod(5 * time.Second)
		_ = tc.SetKeepAlive(true)
		_ = tc.SetNoDelay(true)
	}
	if old := ep.stream.Swap(s); old != nil {
		old.close()
	}
	ep.changes.Add(1)
	go s.readLoop(q, closed)
	return peer, nil
}

func (b *Bind) streamHandshake(c net.Conn, expect string) (string, error) {
	if err := c.SetDeadline(time.Now().Add(StreamHandshakeTimeout)); err != nil {
		return "", err
	}
	var n [8]byte
	_, _ = rand.Read(n[:])
	mine := binary.BigEndian.Uint64(n[:])
	sendPing := func(to string) error {
		p := probe{nonce: mine, from: b.cfg.Self, to: to}
		msg, err := p.marshal()
		if err != nil {
			return err
		}
		return writeFrame(c, msg)
	}
	if expect != "" {
		if err := sendPing(expect); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 512)
	ping, err := readProbe(c, buf)
	if err != nil {
		return "", err
	}
	if ping.pong || ping.to != b.cfg.Self || ping.from == b.cfg.Self || (expect != "" && ping.from != expect) {
		return "", fmt.Errorf("%w: hello from %q to %q", ErrStreamAuth, ping.from, ping.to)
	}
	peer := ping.from
	if expect == "" {
		if err := sendPing(peer); err != nil {
			return "", err
		}
	}
	pong := probe{pong: true, nonce: ping.nonce, from: b.cfg.Self, to: peer}
	if b.cfg.Auth != nil {
		pong.sig = b.cfg.Auth.Sign(pong.signedPart())
	}
	msg, err := pong.marshal()
	if err != nil {
		return "", err
	}
	if err := writeFrame(c, msg); err != nil {
		return "", err
	}
	theirs, err := readProbe(c, buf)
	if err != nil {
		return "", err
	}
	if !theirs.pong || theirs.nonce != mine || theirs.from != peer || theirs.to != b.cfg.Self {
		return "", fmt.Errorf("%w: bad proof from %q", ErrStreamAuth, peer)
	}
	if b.cfg.Auth != nil && !b.cfg.Auth.Verify(peer, theirs.signedPart(), theirs.sig) {
		return "", fmt.Errorf("%w: signature of %q does not verify", ErrStreamAuth, peer)
	}
	return peer, c.SetDeadline(time.Time{})
}

func readProbe(r io.Reader, buf []byte) (*probe, error) {
	n, err := readFrame(r, buf)
	if err != nil {
		return nil, err
	}
	return parseProbe(buf[:n])
}

func writeFrame(w io.Writer, p []byte) error {
	if len(p) > 0xffff {
		return fmt.Errorf("stream: datagram of %d bytes", len(p))
	}
	b := make([]byte, 2+len(p))
	binary.BigEndian.PutUint16(b, uint16(len(p)))
	copy(b[2:], p)
	_, err := w.Write(b)
	return err
}

// readFrame reads one frame into buf and returns its length.
func readFrame(r io.Reader, buf []byte) (int, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n > len(buf) {
		return 0, fmt.Errorf("stream: frame of %d bytes, at most %d", n, len(buf))
	}
	_, err := io.ReadFull(r, buf[:n])
	return n, err
}

// maxStreamFrame is the largest datagram a stream carries (WireGuard's
// largest message for a 64 KiB GSO batch is never framed: batches are
// split into datagrams before they reach Send).
const maxStreamFrame = 0xffff

// send writes a batch of datagrams as one write.
func (s *stream) send(bufs [][]byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return net.ErrClosed
	}
	w := s.wbuf[:0]
	total := 0
	for _, p := range bufs {
		if len(p) > maxStreamFrame {
			return fmt.Errorf("stream: datagram of %d bytes", len(p))
		}
		w = binary.BigEndian.AppendUint16(w, uint16(len(p)))
		w = append(w, p...)
		total += len(p)
	}
	s.wbuf = w
	_ = s.c.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if _, err := s.c.Write(w); err != nil {
		return err
	}
	s.ep.txStream.Add(uint64(total))
	return nil
}

// readLoop hands the stream's datagrams to WireGuard until the stream
// breaks, then drops it. TCP's flow control pushes back on the sender
// instead of dropping when WireGuard is slow.
func (s *stream) readLoop(q chan relayed, closed chan struct{}) {
	defer s.ep.dropStream(s)
	buf := make([]byte, maxStreamFrame)
	for {
		n, err := readFrame(s.c, buf)
		if err != nil {
			return
		}
		if n < 4 || isProbe(buf[:n]) {
			continue // not a WireGuard message
		}
		if s.ep.direct.Load() != nil {
			s.ep.relayIn.Store(true)
		}
		select {
		case q <- relayed{ep: s.ep, pkt: append([]byte(nil), buf[:n]...), stream: true}:
		case <-closed:
			return
		}
	}
}

func (s *stream) close() {
	if s.closed.CompareAndSwap(false, true) {
		s.c.Close()
	}
}

// dropStream forgets s if it is still the peer's stream, and closes it.
func (e *Endpoint) dropStream(s *stream) {
	if e.stream.CompareAndSwap(s, nil) {
		e.changes.Add(1)
	}
	s.close()
}

// HasStream reports whether the peer has an authenticated TCP path.
func (b *Bind) HasStream(name string) bool {
	b.mu.Lock()
	ep := b.peers[name]
	b.mu.Unlock()
	return ep != nil && ep.stream.Load() != nil
}
