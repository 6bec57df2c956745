//go:build linux

package ttcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// DefaultQueue is the first NFQUEUE number a Dialer uses. The lab's delay
// lines use queue 1.
const DefaultQueue = 7300

// Dialer opens Traversing-TCP connections from this host. The zero value
// works; a Dialer may be used by several goroutines at once (each dial
// takes its own queue number). Use one Dialer per network namespace, or
// give each a range of queue numbers of its own.
type Dialer struct {
	// Public is this host's public address as the server sees it (after
	// this site's NAT, e.g. as a broker observed it); zero: the captured
	// SYN's own source address. The public port is taken to be the local
	// port (a port-preserving NAT, or none).
	Public netip.Addr
	// Queue is the first NFQUEUE number; Queues how many numbers from
	// there concurrent dials may use. 0: DefaultQueue and 16.
	Queue, Queues uint16
	// Iptables is the iptables program; "": "iptables".
	Iptables string
	// Logger gets debug lines; nil: discard.
	Logger *slog.Logger
	// Resend is the interval at which, for the first second after the
	// description was sent, a copy of the captured SYN (same ISN and
	// options, through a raw socket) goes out again, so that the SYN
	// crosses a server's router as soon as the server's opening SYN
	// (ServerConfig.OpenTTL) has opened it, rather than at the kernel's
	// first retransmission after 1 s. 0: 50 ms; negative: never.
	Resend time.Duration

	mu   sync.Mutex // guards busy
	busy map[uint16]bool
}

// ErrNoQueue is returned when every queue number of the Dialer is in use.
var ErrNoQueue = errors.New("ttcp: all NFQUEUE numbers in use")

func (d *Dialer) takeQueue() (uint16, error) {
	first, n := d.Queue, d.Queues
	if first == 0 {
		first = DefaultQueue
	}
	if n == 0 {
		n = 16
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy == nil {
		d.busy = map[uint16]bool{}
	}
	for q := first; q < first+n; q++ {
		if !d.busy[q] {
			d.busy[q] = true
			return q, nil
		}
	}
	return 0, ErrNoQueue
}

func (d *Dialer) giveQueue(q uint16) {
	d.mu.Lock()
	delete(d.busy, q)
	d.mu.Unlock()
}

// Dial connects to remote (the server's public endpoint) with the kernel's
// own TCP stack. The outgoing SYN is captured (and let through, so that it
// opens this side's NAT and firewall state) and its description, with this
// host's public endpoint as source, is given to send once, which must carry
// it to the server (e.g. through the broker) and return; a send error ends
// the dial. Inbound RSTs of the flow are dropped until Dial returns, so
// that a firewall's or NAT router's refusal of the first SYN does not
// abort the connect, and so are inbound SYNs without ACK (the server's
// opening SYN, when it comes this far). ctx bounds the whole dial.
//
// Dial must run in the network namespace the connection belongs to, and
// it installs and removes its iptables rules on the calling thread.
func (d *Dialer) Dial(ctx context.Context, remote netip.AddrPort, send func(context.Context, SYN) error) (net.Conn, error) {
	if !remote.Addr().Is4() || remote.Port() == 0 {
		return nil, fmt.Errorf("ttcp dial %v: want an IPv4 address with a port", remote)
	}
	prog := d.Iptables
	if prog == "" {
		prog = "iptables"
	}
	if err := available(prog); err != nil {
		return nil, err
	}
	log := d.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	q, err := d.takeQueue()
	if err != nil {
		return nil, err
	}
	defer d.giveQueue(q)

	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      q,
		MaxPacketLen: 256,
		MaxQueueLen:  64,
		Copymode:     nfqueue.NfQnlCopyPacket,
		AfFamily:     unix.AF_INET,
		WriteTimeout: time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("ttcp dial %v: nfqueue %d: %w", remote, q, err)
	}
	defer nf.Close()
	_ = nf.SetOption(netlink.NoENOBUFS, true)

	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type captured struct {
		syn    SYN
		packet []byte
	}
	syns := make(chan captured, 1)
	err = nf.RegisterWithErrorFunc(dctx, func(a nfqueue.Attribute) int {
		if a.PacketID == nil {
			return 0
		}
		if a.Payload != nil {
			if s, err := SYNFromPacket(*a.Payload); err == nil {
				select {
				case syns <- captured{s, bytes.Clone(*a.Payload)}:
				default: // a retransmission: already described
				}
			}
		}
		_ = nf.SetVerdict(*a.PacketID, nfqueue.NfAccept)
		return 0
	}, func(error) int {
		if dctx.Err() != nil {
			return 1
		}
		return 0
	})
	if err != nil {
		return nil, fmt.Errorf("ttcp dial %v: nfqueue %d: %w", remote, q, err)
	}

	var rules []rule
	defer func() {
		if err := delRules(prog, rules); err != nil {
			log.Warn("ttcp: removing rules", "err", err)
		}
	}()
	rip, rport := remote.Addr().String(), strconv.Itoa(int(remote.Port()))
	control := func(network, address string, c syscall.RawConn) error {
		var lport int
		var berr error
		if err := c.Control(func(fd uintptr) {
			if berr = unix.Bind(int(fd), &unix.SockaddrInet4{}); berr != nil {
				return
			}
			var sa unix.Sockaddr
			if sa, berr = unix.Getsockname(int(fd)); berr == nil {
				lport = sa.(*unix.SockaddrInet4).Port
			}
		}); err != nil {
			return err
		}
		if berr != nil {
			return fmt.Errorf("bind: %w", berr)
		}
		lp := strconv.Itoa(lport)
		rs := []rule{
			{table: "mangle", chain: "OUTPUT", spec: []string{"-p", "tcp", "--syn", "-d", rip, "--dport", rport, "--sport", lp,
				"-m", "comment", "--comment", "pvc-ttcp capture", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(q)), "--queue-bypass"}},
			{table: "filter", chain: "INPUT", spec: []string{"-p", "tcp", "-s", rip, "--sport", rport, "--dport", lp,
				"--tcp-flags", "RST", "RST", "-m", "comment", "--comment", "pvc-ttcp setup", "-j", "DROP"}},
			// The server's opening SYN (ServerConfig.OpenTTL) should die on the
			// way; if it arrives (no router between), a simultaneous open would
			// confuse the server's half-open connection: drop it as a router
			// would.
			{table: "filter", chain: "INPUT", spec: []string{"-p", "tcp", "-s", rip, "--sport", rport, "--dport", lp,
				"--tcp-flags", "SYN,ACK", "SYN", "-m", "comment", "--comment", "pvc-ttcp setup", "-j", "DROP"}},
		}
		if err := addRules(prog, rs); err != nil {
			return err
		}
		rules = rs
		return nil
	}

	resend, raw := d.Resend, -1
	if resend == 0 {
		resend = 50 * time.Millisecond
	}
	if resend > 0 {
		if raw, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
			return nil, fmt.Errorf("ttcp dial %v: raw socket: %w", remote, err)
		}
		defer unix.Close(raw)
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel(nil) // runs before wg.Wait
	wg.Add(1)
	go func() {
		defer wg.Done()
		var c captured
		select {
		case c = <-syns:
		case <-dctx.Done():
			return
		}
		s := c.syn
		if d.Public.IsValid() {
			s.Src = netip.AddrPortFrom(d.Public, s.Src.Port())
		}
		log.Debug("ttcp: captured SYN", "syn", s)
		if err := send(dctx, s); err != nil {
			cancel(fmt.Errorf("sending the SYN description: %w", err))
			return
		}
		if raw < 0 {
			return
		}
		t := time.NewTicker(resend)
		defer t.Stop()
		end := time.After(time.Second)
		sa := &unix.SockaddrInet4{Addr: remote.Addr().As4()}
		for {
			select {
			case <-t.C:
				_ = unix.Sendto(raw, c.packet, 0, sa)
			case <-end:
				return
			case <-dctx.Done():
				return
			}
		}
	}()

	nd := net.Dialer{Control: control}
	c, err := nd.DialContext(dctx, "tcp4", remote.String())
	if err != nil {
		if cause := context.Cause(dctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		return nil, fmt.Errorf("ttcp dial %v: %w", remote, err)
	}
	return c, nil
}
