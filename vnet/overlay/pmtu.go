package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// underlayOverhead is what WireGuard over UDP over IPv4 adds to a packet
// of the TUN: 20 bytes of IP, 8 of UDP, 32 of WireGuard's data header and
// authentication tag. PVC's paths are IPv4.
const underlayOverhead = 60

// minClampMTU is the smallest MTU a peer's route is clamped to (IPv4's
// minimum datagram size a host must accept).
const minClampMTU = 576

// clamp is called by the Bind when a batch to peer's direct path at
// remote was refused as too large for the path. It asks the kernel the
// path's MTU toward remote (the link's, or a smaller one learnt from a
// router's ICMP) and, when the TUN's MTU is larger than that allows,
// installs a route to the peer's virtual address through the TUN with the
// MTU that fits (the path's minus 60, down to a multiple of 16). TCP takes its segment size from the route, new and
// established connections alike, so the datagrams fit again instead of
// going out fragmented. The route goes with the peer (RemovePeer) or the
// TUN.
func (o *Overlay) clamp(peer string, remote netip.AddrPort) {
	o.mu.Lock()
	p := o.peers[peer]
	o.mu.Unlock()
	if p == nil {
		return
	}
	mtu, err := o.clampRoute(p.IP, remote.Addr())
	switch {
	case err != nil:
		o.log.Warn("clamping the MTU toward a peer failed: its datagrams go out fragmented", "peer", peer, "remote", remote, "err", err)
	case mtu > 0:
		o.mu.Lock()
		o.clamped[peer] = p.IP
		gone := o.peers[peer] == nil
		o.mu.Unlock()
		if gone { // removed meanwhile
			o.unclamp(peer)
			return
		}
		o.log.Info("path narrower than the TUN's MTU: TCP toward the peer clamped", "peer", peer, "remote", remote, "mtu", mtu)
	}
}

// inNS runs fn in the overlay's network namespace.
func (o *Overlay) inNS(fn func() error) error {
	if o.cfg.OpenIn != nil {
		return o.cfg.OpenIn(fn)
	}
	return fn()
}

// clampRoute installs the route for ip; it returns the MTU set, or 0 when
// the TUN's own MTU fits the path.
func (o *Overlay) clampRoute(ip, remote netip.Addr) (int, error) {
	name, err := o.cfg.TUN.Name()
	if err != nil {
		return 0, err
	}
	tunMTU, err := o.cfg.TUN.MTU()
	if err != nil {
		return 0, err
	}
	var set int
	err = o.inNS(func() error {
		routes, err := netlink.RouteGet(net.IP(remote.AsSlice()))
		if err != nil {
			return fmt.Errorf("route to %v: %w", remote, err)
		}
		if len(routes) == 0 {
			return fmt.Errorf("no route to %v", remote)
		}
		pmtu := routes[0].MTU // a learnt path MTU, else 0
		if pmtu == 0 {
			l, err := netlink.LinkByIndex(routes[0].LinkIndex)
			if err != nil {
				return err
			}
			pmtu = l.Attrs().MTU
		}
		// WireGuard pads a packet to a multiple of 16 bytes, up to the
		// TUN's MTU, not the route's: a clamp that is not a multiple of 16
		// would still make datagrams up to 15 bytes too large.
		mtu := max((pmtu-underlayOverhead)&^15, minClampMTU)
		if mtu >= tunMTU {
			return nil
		}
		tun, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		r := peerRoute(tun, ip)
		r.MTU = mtu
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %v/32 dev %s mtu %d: %w", ip, name, mtu, err)
		}
		set = mtu
		return nil
	})
	return set, err
}

// unclamp removes the route clampRoute installed for a peer, if any.
func (o *Overlay) unclamp(peer string) {
	o.mu.Lock()
	ip, ok := o.clamped[peer]
	delete(o.clamped, peer)
	o.mu.Unlock()
	if !ok {
		return
	}
	name, err := o.cfg.TUN.Name()
	if err != nil {
		return
	}
	err = o.inNS(func() error {
		tun, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		return netlink.RouteDel(peerRoute(tun, ip))
	})
	if err != nil && !errors.Is(err, net.ErrClosed) {
		o.log.Debug("removing a peer's MTU clamp", "peer", peer, "err", err)
	}
}

// peerRoute is the route to a peer's virtual address through the TUN.
func peerRoute(tun netlink.Link, ip netip.Addr) *netlink.Route {
	return &netlink.Route{LinkIndex: tun.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(32, 32)}}
}
