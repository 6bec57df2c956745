// Package overlay is the engine of PVC's virtual network on one host: the
// wireguard-go device that encrypts between the TUN device (interpose/tun,
// optionally wrapped by the policy filter) and PVC's Bind (vnet/bind), and
// the set of certified peers it may talk to. The daemon feeds it peers
// (from the brokers' registry, after verification) and relayed datagrams;
// the overlay reports each peer's path, handshake and byte counts.
//
// Peers are configured in wireguard-go as soon as they are known (no
// handshake happens until traffic flows), but their direct paths are
// probed only once the peer is active: when the first packet for it
// leaves the TUN, or when it reaches us. So a host that knows thousands
// of peers probes only those it talks to.
package overlay

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/vnet/bind"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// Config configures an Overlay.
type Config struct {
	Self       string         // this peer's name
	Address    netip.Addr     // this peer's virtual IP
	PrivateKey keys.WGPrivate // WireGuard static key
	ListenPort uint16         // UDP port; 0: any
	TUN        tun.Device     // created and addressed by the caller; the overlay owns it from now on
	Relay      bind.Relay     // nil: no relay path
	Auth       bind.Auth      // signs and verifies path probes
	OpenIn     func(func() error) error
	Logger     *slog.Logger // nil: discard
	// ProbeInterval is passed to the Bind (0: its default).
	ProbeInterval time.Duration
	// ReleaseIdle: after traffic, once the TUN has been idle this long,
	// the overlay returns the memory of wireguard-go's buffer pools to the
	// OS (0: 2 s; negative: never). wireguard-go's pools grow without
	// bound under load (64 KiB per buffer with offloads) and the Go runtime
	// gives freed memory back only slowly: without this, pvcd stays at
	// 150 MB after one bulk transfer.
	ReleaseIdle time.Duration
	// Other receives the packets on the shared UDP socket that are neither
	// WireGuard nor probes (STUN for ICE); see bind.Config.Other.
	Other func(pkt []byte, from netip.AddrPort)
	// OnActive is called (on its own goroutine) when a peer becomes active:
	// the first packet for it left the TUN, or it contacted us. The
	// traversal techniques start there.
	OnActive func(name string)
	// OnTrouble is passed to the Bind (see bind.Config.OnTrouble).
	OnTrouble func(peer string)
}

// Peer is a certified peer.
type Peer struct {
	Name       string
	IP         netip.Addr
	Key        keys.WGPublic
	Candidates []bind.Candidate // where it may be reached directly
	// KeepAlive makes WireGuard send a keepalive every 25 s once the peer
	// is active. Setting it starts a handshake at once: set it on one side
	// of a pair only, and only where that side initiates (simultaneous
	// handshakes collide and settle only after 5 s). pvcd does not need it:
	// the Bind's path probes keep NAT mappings open.
	KeepAlive bool
}

// Overlay is one host's virtual network engine.
type Overlay struct {
	cfg  Config
	bind *bind.Bind
	dev  *device.Device
	log  *slog.Logger
	port uint16

	batches atomic.Uint64 // TUN reads and writes (batches), for ReleaseIdle

	mu     sync.Mutex // guards peers, byIP, byKey, active
	peers  map[string]*Peer
	byIP   map[netip.Addr]string
	byKey  map[keys.WGPublic]string
	active map[string]bool
	// clamped: peers whose route through the TUN has a smaller MTU (pmtu.go)
	clamped map[string]netip.Addr

	closeOnce sync.Once
}

// ErrUnknownPeer is returned for a name that is not a configured peer.
var ErrUnknownPeer = errors.New("unknown peer")

// New starts the device.
func New(cfg Config) (*Overlay, error) {
	if cfg.Self == "" || !cfg.Address.IsValid() || cfg.TUN == nil {
		return nil, errors.New("overlay: Self, Address and TUN are required")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o := &Overlay{cfg: cfg, log: log,
		peers: map[string]*Peer{}, byIP: map[netip.Addr]string{}, byKey: map[keys.WGPublic]string{}, active: map[string]bool{},
		clamped: map[string]netip.Addr{}}
	o.bind = bind.New(bind.Config{Self: cfg.Self, Relay: cfg.Relay, Auth: cfg.Auth, OpenIn: cfg.OpenIn, ProbeInterval: cfg.ProbeInterval, Other: cfg.Other, Logger: cfg.Logger, OnTrouble: cfg.OnTrouble,
		OnOversize: func(peer string, remote netip.AddrPort) { o.clamp(peer, remote) }})
	wlog := &device.Logger{
		Verbosef: func(string, ...any) {},
		Errorf:   func(f string, a ...any) { log.Debug("wireguard: " + fmt.Sprintf(f, a...)) },
	}
	o.dev = device.NewDevice(&activity{Device: cfg.TUN, o: o}, o.bind, wlog)
	conf := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(cfg.PrivateKey[:]), cfg.ListenPort)
	if err := o.dev.IpcSet(conf); err != nil {
		o.dev.Close()
		return nil, fmt.Errorf("overlay: configure device: %w", err)
	}
	if err := o.dev.Up(); err != nil {
		o.dev.Close()
		return nil, fmt.Errorf("overlay: device up: %w", err)
	}
	st, err := o.deviceState()
	if err != nil {
		o.dev.Close()
		return nil, err
	}
	o.port = st.port
	return o, nil
}

// Port returns the UDP port the overlay listens on.
func (o *Overlay) Port() uint16 { return o.port }

// Bind returns the overlay's Bind (for relayed datagrams and other packets
// on the shared socket).
func (o *Overlay) Bind() *bind.Bind { return o.bind }

// Run probes paths, and releases idle buffer memory, until ctx ends.
func (o *Overlay) Run(ctx context.Context) {
	done := make(chan struct{})
	go func() { defer close(done); o.releaseWhenIdle(ctx) }()
	o.bind.Run(ctx)
	<-done
}

// releaseWhenIdle returns the memory of wireguard-go's buffer pools to the
// OS once traffic has stopped for cfg.ReleaseIdle. The pools are
// sync.Pools: two collections empty them (the first moves them to the
// victim cache), then FreeOSMemory hands the pages back. It costs a few
// milliseconds once per burst of traffic, never during one.
func (o *Overlay) releaseWhenIdle(ctx context.Context) {
	every := o.cfg.ReleaseIdle
	if every < 0 {
		return
	}
	if every == 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	last, dirty := o.batches.Load(), false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n := o.batches.Load()
		switch {
		case n != last:
			last, dirty = n, true
		case dirty:
			dirty = false
			runtime.GC()
			debug.FreeOSMemory()
		}
	}
}

// Close stops the device; it closes the TUN, which removes the interface.
func (o *Overlay) Close() { o.closeOnce.Do(o.dev.Close) }

// SetPeer adds or updates a peer. The caller has verified its certificate.
func (o *Overlay) SetPeer(p Peer) error {
	if p.Name == "" || p.Name == o.cfg.Self || !p.IP.IsValid() {
		return fmt.Errorf("overlay: bad peer %q %v", p.Name, p.IP)
	}
	o.mu.Lock()
	if old := o.peers[p.Name]; old != nil {
		delete(o.byIP, old.IP)
		delete(o.byKey, old.Key)
	}
	if other, ok := o.byIP[p.IP]; ok && other != p.Name {
		o.mu.Unlock()
		return fmt.Errorf("overlay: peer %s: address %v is %s's", p.Name, p.IP, other)
	}
	cp := p
	o.peers[p.Name] = &cp
	o.byIP[p.IP] = p.Name
	o.byKey[p.Key] = p.Name
	active := o.active[p.Name]
	o.mu.Unlock()
	conf := fmt.Sprintf("public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s/32\nendpoint=peer:%s\n",
		hex.EncodeToString(p.Key[:]), p.IP, p.Name)
	if err := o.dev.IpcSet(conf); err != nil {
		return fmt.Errorf("overlay: configure peer %s: %w", p.Name, err)
	}
	if active {
		o.bind.SetCandidates(p.Name, p.Candidates)
		return o.keepAlive(&cp)
	}
	return nil
}

// keepAlive turns on WireGuard's keepalive for an active peer that wants
// it. Not earlier: setting it starts a handshake at once, and a handshake
// toward a peer that does not know us yet is dropped and retried by
// WireGuard only after 5 s.
func (o *Overlay) keepAlive(p *Peer) error {
	if !p.KeepAlive {
		return nil
	}
	return o.dev.IpcSet("public_key=" + hex.EncodeToString(p.Key[:]) + "\npersistent_keepalive_interval=25\n")
}

// RemovePeer tears a peer down at once (a revocation).
func (o *Overlay) RemovePeer(name string) error {
	o.mu.Lock()
	p := o.peers[name]
	if p == nil {
		o.mu.Unlock()
		return fmt.Errorf("%w %s", ErrUnknownPeer, name)
	}
	delete(o.peers, name)
	delete(o.byIP, p.IP)
	delete(o.byKey, p.Key)
	delete(o.active, name)
	o.mu.Unlock()
	o.bind.RemovePeer(name)
	o.unclamp(name)
	return o.dev.IpcSet("public_key=" + hex.EncodeToString(p.Key[:]) + "\nremove=true\n")
}

// DeliverRelay hands over a datagram relayed by a broker from a peer.
func (o *Overlay) DeliverRelay(from string, pkt []byte) {
	o.mu.Lock()
	_, known := o.peers[from]
	o.mu.Unlock()
	if !known {
		return // not a certified peer: drop
	}
	o.activate(from)
	o.bind.DeliverRelay(from, pkt)
}

// activate starts probing the direct paths of a peer.
func (o *Overlay) activate(name string) {
	o.mu.Lock()
	p := o.peers[name]
	if p == nil || o.active[name] {
		o.mu.Unlock()
		return
	}
	o.active[name] = true
	cp := *p
	o.mu.Unlock()
	o.log.Info("peer active", "peer", name, "candidates", len(cp.Candidates))
	o.bind.SetCandidates(name, cp.Candidates)
	if o.cfg.OnActive != nil {
		go o.cfg.OnActive(name)
	}
	if err := o.keepAlive(&cp); err != nil {
		o.log.Warn("keepalive", "peer", name, "err", err)
	}
}

// activity watches the packets that leave the TUN and activates the peer
// each is addressed to; it counts the batches both ways (ReleaseIdle).
type activity struct {
	tun.Device
	o *Overlay
}

func (a *activity) Write(bufs [][]byte, offset int) (int, error) {
	a.o.batches.Add(1)
	return a.Device.Write(bufs, offset)
}

func (a *activity) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := a.Device.Read(bufs, sizes, offset)
	a.o.batches.Add(1)
	var last netip.Addr
	for i := 0; i < n; i++ {
		pkt := bufs[i][offset : offset+sizes[i]]
		if len(pkt) < 20 || pkt[0]>>4 != 4 {
			continue
		}
		dst := netip.AddrFrom4([4]byte(pkt[16:20]))
		if dst == last {
			continue
		}
		last = dst
		a.o.mu.Lock()
		name, ok := a.o.byIP[dst]
		act := a.o.active[name]
		a.o.mu.Unlock()
		if ok && !act {
			a.o.activate(name)
		}
	}
	return n, err
}

// PeerStatus is a peer's state.
type PeerStatus struct {
	Name          string
	IP            netip.Addr
	Active        bool
	Path          bind.PathKind // direct or relay
	Remote        string
	RTT           time.Duration
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// Peers returns every configured peer's state, sorted by name.
func (o *Overlay) Peers() []PeerStatus {
	st, _ := o.deviceState()
	paths := map[string]bind.PeerStatus{}
	for _, s := range o.bind.Status() {
		paths[s.Name] = s
	}
	o.mu.Lock()
	out := make([]PeerStatus, 0, len(o.peers))
	for name, p := range o.peers {
		ps := PeerStatus{Name: name, IP: p.IP, Active: o.active[name], Path: bind.PathRelay}
		if b, ok := paths[name]; ok {
			ps.Path, ps.Remote, ps.RTT = b.Path, b.Remote, b.RTT
		}
		if d, ok := st.peers[p.Key]; ok {
			ps.LastHandshake, ps.RxBytes, ps.TxBytes = d.handshake, d.rx, d.tx
		}
		out = append(out, ps)
	}
	o.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// PeerByIP returns the name of the peer with that virtual IP.
func (o *Overlay) PeerByIP(ip netip.Addr) (string, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, ok := o.byIP[ip]
	return n, ok
}

type devState struct {
	port  uint16
	peers map[keys.WGPublic]peerCounters
}

type peerCounters struct {
	handshake time.Time
	rx, tx    uint64
}

// deviceState reads wireguard-go's UAPI view of the device.
func (o *Overlay) deviceState() (devState, error) {
	s := devState{peers: map[keys.WGPublic]peerCounters{}}
	conf, err := o.dev.IpcGet()
	if err != nil {
		return s, err
	}
	var cur *keys.WGPublic
	var c peerCounters
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				c.handshake = time.Unix(sec, nsec)
			}
			s.peers[*cur] = c
		}
	}
	for _, line := range strings.Split(conf, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "listen_port":
			p, _ := strconv.Atoi(v)
			s.port = uint16(p)
		case "public_key":
			flush()
			var key keys.WGPublic
			if b, err := hex.DecodeString(v); err == nil && len(b) == len(key) {
				copy(key[:], b)
			}
			cur, c, sec, nsec = &key, peerCounters{}, 0, 0
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			c.rx, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			c.tx, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	flush()
	return s, nil
}

// Active reports whether traffic has flowed to or from the peer.
func (o *Overlay) Active(name string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.active[name]
}

// ActivePeers lists the peers traffic has flowed to or from.
func (o *Overlay) ActivePeers() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.active))
	for n := range o.active {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
