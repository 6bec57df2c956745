// Package upnp maps pvcd's WireGuard UDP port on the site's UPnP Internet
// Gateway Device (huin/goupnp), so peers outside the site reach this host
// directly at the router's public address.
//
// A Mapper discovers the gateway (a known root-description URL first, then
// an SSDP search), deletes the mappings an earlier run of the same peer left
// behind after a crash (they carry the description "pvc CLUSTER PEER"), maps
// the port with a lease, reports the external endpoint for the daemon to
// advertise, renews the lease at half its life (mapping again if the gateway
// lost it), and deletes the mapping when its context ends. Local policy can
// forbid all of it (Config.Disabled): then nothing is sent.
//
// The Mapper talks to the gateway through the small Gateway interface;
// upnptest has an in-memory fake of it.
package upnp

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// Errors that Status.Err and Run wrap.
var (
	ErrDisabled        = errors.New("UPnP forbidden by local policy")
	ErrNoGateway       = errors.New("no UPnP gateway found")
	ErrRefused         = errors.New("gateway refused mapping")
	ErrUnreachable     = errors.New("UPnP gateway not answering")
	ErrNoPublicAddress = errors.New("gateway's external address is not public")
	ErrRunning         = errors.New("mapper already running")
)

// Protocol is the only protocol the Mapper maps: WireGuard is UDP.
const Protocol = "UDP"

// Defaults for the zero values of Config.
const (
	DefaultLease           = time.Hour
	DefaultDiscoverTimeout = 5 * time.Second // SSDP waits 2 s, then each device's description
	DefaultCallTimeout     = 5 * time.Second
	DefaultCleanupTimeout  = 2 * time.Second
	DefaultRetryMin        = 10 * time.Second
	DefaultRetryMax        = 10 * time.Minute
	// extraPorts is how many other external ports are tried after the
	// internal port when the gateway reports a conflict.
	extraPorts = 8
	// maxList bounds the walk over the gateway's mapping table.
	maxList = 1024
)

// Config configures a Mapper. Zero values mean the documented defaults.
type Config struct {
	Cluster string // the cluster's name, for the description
	Peer    string // this peer's name, for the description
	Port    uint16 // the internal UDP port (WireGuard's); required

	// Lease is the lifetime asked for each mapping; it is renewed at half
	// of it. Zero: DefaultLease. Gateways count whole seconds.
	Lease time.Duration
	// RootURL is the gateway's root-description URL if known (remembered
	// from an earlier run or configured); it skips the ~2 s SSDP search and
	// falls back to it when it fails. Empty: search only.
	RootURL string
	// DiscoverTimeout bounds one discovery. Zero: DefaultDiscoverTimeout.
	DiscoverTimeout time.Duration
	// CallTimeout bounds each request to the gateway. Zero: DefaultCallTimeout.
	CallTimeout time.Duration
	// CleanupTimeout bounds deleting the mapping after the context ended.
	// Zero: DefaultCleanupTimeout.
	CleanupTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts after a
	// failure (no gateway, refused, lost). Zero: DefaultRetryMin, DefaultRetryMax.
	RetryMin, RetryMax time.Duration

	// Disabled forbids UPnP (local policy "upnp deny"): Run sends nothing
	// and returns ErrDisabled.
	Disabled bool
	// Logger receives the Mapper's logs. Nil: discarded.
	Logger *slog.Logger
	// OnStatus, if not nil, is called from Run's goroutine after every
	// change of status: StateMapped with the endpoint to advertise, and
	// StateFailed or StateStopped when it must be withdrawn. It must not
	// block for long.
	OnStatus func(Status)
	// Discover finds the gateway. Nil: this package's Discover (goupnp).
	Discover func(ctx context.Context, rootURL string) (Gateway, error)
}

// State is where a Mapper is in its life.
type State int

// The states of a Mapper.
const (
	StateIdle        State = iota // Run not called yet
	StateDisabled                 // forbidden by local policy; nothing was sent
	StateDiscovering              // looking for the gateway, or mapping
	StateMapped                   // External is mapped and may be advertised
	StateFailed                   // not mapped; Err says why; Run retries after a backoff
	StateStopped                  // Run returned; the mapping was deleted
)

func (s State) String() string {
	switch s {
	case StateIdle:
		return "idle"
	case StateDisabled:
		return "disabled"
	case StateDiscovering:
		return "discovering"
	case StateMapped:
		return "mapped"
	case StateFailed:
		return "failed"
	case StateStopped:
		return "stopped"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Status is what a Mapper reports.
type Status struct {
	State    State
	External netip.AddrPort // the endpoint to advertise; valid only in StateMapped
	Internal netip.AddrPort // this host's address and port the mapping points to
	Gateway  string         // the gateway's service and control URL, once found
	Lease    time.Duration  // the lease granted; 0 with a mapping: permanent
	Err      error          // why not mapped (StateFailed, StateDisabled); wraps a sentinel

	Discovery time.Duration // how long the last discovery took
	Setup     time.Duration // from found to mapped: stale cleanup, mapping, external address
}

// Why returns a short reason for `pvcd peers`' "why" column: empty when
// mapped, else e.g. "no UPnP gateway found" or "gateway refused mapping:
// 718 ConflictInMappingEntry".
func (s Status) Why() string {
	switch {
	case s.State == StateMapped:
		return ""
	case s.Err == nil:
		return s.State.String()
	case errors.Is(s.Err, ErrDisabled):
		return ErrDisabled.Error()
	case errors.Is(s.Err, ErrNoGateway):
		return ErrNoGateway.Error()
	case errors.Is(s.Err, ErrRefused):
		var ue *Error
		if errors.As(s.Err, &ue) {
			return ErrRefused.Error() + ": " + ue.Error()
		}
		return ErrRefused.Error()
	case errors.Is(s.Err, ErrUnreachable):
		return ErrUnreachable.Error()
	case errors.Is(s.Err, ErrNoPublicAddress):
		return s.Err.Error()
	}
	return s.Err.Error()
}

// Mapper keeps one UDP port mapped on the site's gateway while Run runs.
type Mapper struct {
	cfg  Config
	desc string
	log  *slog.Logger

	mu      sync.Mutex // guards the fields below
	status  Status
	running bool
}

// New returns a Mapper for cfg; Run starts it.
func New(cfg Config) *Mapper {
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.DiscoverTimeout <= 0 {
		cfg.DiscoverTimeout = DefaultDiscoverTimeout
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.CleanupTimeout <= 0 {
		cfg.CleanupTimeout = DefaultCleanupTimeout
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = DefaultRetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryMin)
	}
	if cfg.Discover == nil {
		cfg.Discover = func(ctx context.Context, rootURL string) (Gateway, error) {
			return Discover(ctx, rootURL, nil)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := Description(cfg.Cluster, cfg.Peer)
	return &Mapper{cfg: cfg, desc: d, log: log.With("upnp", d)}
}

// Description returns the description this Mapper's mappings carry.
func (m *Mapper) Description() string { return m.desc }

// Status returns the current status.
func (m *Mapper) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.status
}

func (m *Mapper) setStatus(s Status) {
	m.mu.Lock()
	m.status = s
	m.mu.Unlock()
	if m.cfg.OnStatus != nil {
		m.cfg.OnStatus(s)
	}
}

// Run keeps the port mapped until ctx ends, then deletes the mapping
// (within CleanupTimeout) and returns nil. Failures (no gateway, refusal,
// lost gateway) are reported through the status, and retried with a
// backoff between RetryMin and RetryMax. With Config.Disabled it returns
// ErrDisabled at once without sending anything. All goroutines it starts
// end before it returns.
func (m *Mapper) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.running {
		m.mu.Unlock()
		return ErrRunning
	}
	m.running = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.running = false
		m.mu.Unlock()
	}()

	if m.cfg.Disabled {
		m.setStatus(Status{State: StateDisabled, Err: ErrDisabled})
		m.log.Info("UPnP forbidden by local policy")
		return ErrDisabled
	}
	if m.cfg.Port == 0 {
		return errors.New("upnp: no port to map")
	}
	backoff := m.cfg.RetryMin
	for {
		mapped, st, err := m.session(ctx)
		if ctx.Err() != nil {
			m.setStatus(Status{State: StateStopped, Gateway: st.Gateway})
			return nil
		}
		if mapped {
			backoff = m.cfg.RetryMin
		}
		st.State, st.External, st.Err = StateFailed, netip.AddrPort{}, err
		m.setStatus(st)
		m.log.Warn("UPnP mapping failed", "err", err, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			m.setStatus(Status{State: StateStopped, Gateway: st.Gateway})
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, m.cfg.RetryMax)
	}
}

// session discovers the gateway, maps the port and keeps it mapped until
// ctx ends (nil error) or something fails. mapped says whether a mapping
// was made. The mapping is deleted before session returns.
func (m *Mapper) session(ctx context.Context) (mapped bool, st Status, err error) {
	m.setStatus(Status{State: StateDiscovering})
	t0 := time.Now()
	dctx, cancel := context.WithTimeout(ctx, m.cfg.DiscoverTimeout)
	gw, err := m.cfg.Discover(dctx, m.cfg.RootURL)
	cancel()
	st.Discovery = time.Since(t0)
	if err != nil {
		if !errors.Is(err, ErrNoGateway) {
			err = fmt.Errorf("%w: %w", ErrNoGateway, err)
		}
		return false, st, err
	}
	st.Gateway = gw.Location()
	st.Internal = netip.AddrPortFrom(gw.LocalAddr(), m.cfg.Port)
	m.log.Info("UPnP gateway found", "gateway", st.Gateway, "local", gw.LocalAddr(), "took", st.Discovery.Round(time.Millisecond))

	t1 := time.Now()
	m.removeStale(ctx, gw)
	cur, err := m.mapPort(ctx, gw)
	if err != nil {
		return false, st, err
	}
	defer m.unmap(ctx, gw, &cur)
	ext, err := m.externalIP(ctx, gw)
	if err != nil {
		return true, st, err
	}
	st.Setup = time.Since(t1)
	st.State, st.External, st.Lease = StateMapped, netip.AddrPortFrom(ext, cur.ExternalPort), cur.Lease
	m.setStatus(st)
	m.log.Info("UPnP port mapped", "external", st.External, "internal", st.Internal, "lease", cur.Lease, "took", st.Setup.Round(time.Millisecond))

	lastOK := time.Now()
	for {
		interval := m.cfg.Lease / 2 // also for a permanent mapping: check it is there
		if err := sleep(ctx, time.Until(lastOK.Add(interval))); err != nil {
			return true, st, nil
		}
		for {
			err = m.refresh(ctx, gw, &cur, &st)
			if err == nil || ctx.Err() != nil {
				break
			}
			expired := cur.Lease > 0 && time.Since(lastOK) >= cur.Lease
			if !errors.Is(err, ErrUnreachable) || expired {
				return true, st, err
			}
			m.log.Warn("UPnP refresh failed; retrying before the lease ends", "err", err)
			if sleep(ctx, interval/4) != nil {
				return true, st, nil
			}
		}
		if ctx.Err() != nil {
			return true, st, nil
		}
		lastOK = time.Now()
	}
}

// sleep waits d or until ctx ends (then it returns ctx's error).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// call runs one request to the gateway within CallTimeout. A failure that
// is not a refusal (*Error) wraps ErrUnreachable.
func (m *Mapper) call(ctx context.Context, op string, f func(context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CallTimeout)
	defer cancel()
	err := f(cctx)
	if err == nil {
		return nil
	}
	if errorCode(err) != 0 {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrUnreachable, op, err)
}

// removeStale deletes the mappings that carry this Mapper's description:
// earlier runs of this peer that ended without deleting them (kill -9,
// power cut). Failures are logged: they do not stop the mapping.
func (m *Mapper) removeStale(ctx context.Context, gw Gateway) {
	var stale []Mapping
	for i := range maxList {
		var e Mapping
		err := m.call(ctx, "list port mappings", func(c context.Context) (err error) {
			e, err = gw.PortMappingByIndex(c, uint16(i))
			return err
		})
		if err != nil {
			code := errorCode(err)
			if code != CodeArrayIndexInvalid && code != CodeNoSuchEntry {
				m.log.Warn("UPnP listing mappings failed; stale mappings are not removed", "index", i, "err", err)
			}
			break
		}
		if e.Description == m.desc {
			stale = append(stale, e)
		}
	}
	for _, e := range stale {
		err := m.call(ctx, "delete stale mapping", func(c context.Context) error {
			return gw.DeletePortMapping(c, e.ExternalPort, e.Protocol)
		})
		if err != nil {
			m.log.Warn("UPnP stale mapping not deleted", "mapping", e, "err", err)
			continue
		}
		m.log.Info("UPnP stale mapping deleted", "mapping", e)
	}
}

// candidates returns the external ports to try: the internal port, then
// ports derived from the description, the same on every run of this peer.
func (m *Mapper) candidates() []uint16 {
	out := []uint16{m.cfg.Port}
	h := fnv.New64a()
	h.Write([]byte(m.desc))
	seed := h.Sum64()
	r := rand.New(rand.NewPCG(seed, uint64(m.cfg.Port)))
	for len(out) < 1+extraPorts {
		p := uint16(1024 + r.IntN(65536-1024))
		if p != m.cfg.Port {
			out = append(out, p)
		}
	}
	return out
}

// mapPort maps the internal port, trying the same external port first and
// other ports after a conflict.
func (m *Mapper) mapPort(ctx context.Context, gw Gateway) (Mapping, error) {
	lease := m.cfg.Lease
	var conflict error
	ports := m.candidates()
	for i := 0; i < len(ports); i++ {
		mp := Mapping{ExternalPort: ports[i], Protocol: Protocol, InternalPort: m.cfg.Port,
			InternalClient: gw.LocalAddr(), Description: m.desc, Lease: lease}
		err := m.call(ctx, fmt.Sprintf("map %d/%s", mp.ExternalPort, Protocol), func(c context.Context) error {
			return gw.AddPortMapping(c, mp)
		})
		switch code := errorCode(err); {
		case err == nil:
			return mp, nil
		case code == 0:
			return Mapping{}, err
		case code == CodeOnlyPermanentLeases && lease != 0:
			m.log.Info("UPnP gateway grants only permanent mappings", "err", err)
			lease = 0
			i-- // the same port again
		case code == CodeConflictInMappingEntry || code == CodeConflictWithOtherMechan:
			m.log.Debug("UPnP port taken; trying another", "port", mp.ExternalPort, "err", err)
			conflict = err
		default:
			return Mapping{}, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	return Mapping{}, fmt.Errorf("%w: %d ports tried: %w", ErrRefused, len(ports), conflict)
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// externalIP asks for the gateway's external address; one that peers on
// the Internet cannot reach (private, shared CGN space, unspecified) is an
// error wrapping ErrNoPublicAddress: the router is behind another NAT.
func (m *Mapper) externalIP(ctx context.Context, gw Gateway) (netip.Addr, error) {
	var a netip.Addr
	err := m.call(ctx, "get external address", func(c context.Context) (err error) {
		a, err = gw.ExternalIP(c)
		return err
	})
	if err != nil {
		return netip.Addr{}, err
	}
	if !a.IsValid() || a.IsUnspecified() || a.IsPrivate() || a.IsLoopback() || a.IsLinkLocalUnicast() || cgnat.Contains(a) {
		return netip.Addr{}, fmt.Errorf("%w: %v (another NAT in front of the gateway?)", ErrNoPublicAddress, a)
	}
	return a, nil
}

// refresh renews cur, maps again if the gateway lost it or gave its port
// to someone else, and reports a changed endpoint.
func (m *Mapper) refresh(ctx context.Context, gw Gateway, cur *Mapping, st *Status) error {
	var got Mapping
	err := m.call(ctx, "check mapping", func(c context.Context) (err error) {
		got, err = gw.PortMapping(c, cur.ExternalPort, cur.Protocol)
		return err
	})
	switch {
	case err == nil && got.InternalClient == cur.InternalClient && got.InternalPort == cur.InternalPort:
	case err == nil || errorCode(err) == CodeNoSuchEntry:
		m.log.Warn("UPnP gateway lost the mapping; mapping again", "port", cur.ExternalPort, "now", got)
	case errorCode(err) != 0:
		// Some gateways do not implement the query: renew regardless.
	default:
		return err
	}
	err = m.call(ctx, "renew mapping", func(c context.Context) error { return gw.AddPortMapping(c, *cur) })
	if code := errorCode(err); code == CodeConflictInMappingEntry || code == CodeConflictWithOtherMechan {
		m.log.Warn("UPnP port taken by another client; mapping another", "port", cur.ExternalPort)
		var nm Mapping
		if nm, err = m.mapPort(ctx, gw); err == nil {
			*cur = nm
		}
	} else if code != 0 {
		err = fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err != nil {
		return err
	}
	ext, err := m.externalIP(ctx, gw)
	if err != nil {
		return err
	}
	if e := netip.AddrPortFrom(ext, cur.ExternalPort); e != st.External {
		m.log.Info("UPnP external endpoint changed", "old", st.External, "new", e)
		st.External = e
		st.Lease = cur.Lease
		m.setStatus(*st)
	}
	m.log.Debug("UPnP mapping renewed", "external", st.External, "lease", cur.Lease)
	return nil
}

// unmap deletes cur within CleanupTimeout, also after ctx ended: the one
// place the Mapper works on past its context (context.WithoutCancel).
func (m *Mapper) unmap(ctx context.Context, gw Gateway, cur *Mapping) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.cfg.CleanupTimeout)
	defer cancel()
	t0 := time.Now()
	if err := gw.DeletePortMapping(cctx, cur.ExternalPort, cur.Protocol); err != nil {
		m.log.Warn("UPnP mapping not deleted; its lease will end it", "port", cur.ExternalPort, "err", err)
		return
	}
	m.log.Info("UPnP mapping deleted", "port", cur.ExternalPort, "took", time.Since(t0).Round(time.Millisecond))
}
