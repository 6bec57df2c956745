// Package tun is PVC's default interposer: a Linux TUN device that carries
// the applications' packets for the cluster's subnet to pvcd. It uses
// wireguard-go's TUN, which opens the device with IFF_VNET_HDR and
// negotiates TSO/USO offloads, so the kernel hands over large batches.
//
// Create configures the device in the network namespace of the calling
// OS thread: the address (the peer's virtual IP with the cluster's prefix
// length, which also installs the route to the cluster's subnet), the MTU,
// and the link state. Close removes the device with everything on it.
package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// DefaultName is the interface name pvcd uses unless told otherwise.
const DefaultName = "pvc0"

// DefaultMTU leaves room for WireGuard's 80 bytes of overhead (IPv6 outer
// header) in a 1500-byte path: 1420, as wireguard-go's default.
const DefaultMTU = 1420

// MinMTU and MaxMTU bound the MTU a device may have (IPv4's minimum
// datagram a host must accept; the largest IPv4 packet).
const (
	MinMTU = 576
	MaxMTU = 65535
)

// Config describes the device.
type Config struct {
	Name   string       // interface name; "" means DefaultName
	MTU    int          // 0 means DefaultMTU
	Prefix netip.Prefix // the peer's address with the cluster's prefix length, e.g. 240.7.0.3/16
}

// Device is a configured TUN device.
type Device struct {
	wgtun.Device
	name   string
	prefix netip.Prefix
	index  int
	nl     *netlink.Handle // bound to the device's network namespace

	mu     sync.Mutex
	closed bool
}

// ErrConfig is wrapped by errors about a bad Config.
var ErrConfig = errors.New("bad TUN configuration")

var overlay = netip.MustParsePrefix("240.0.0.0/4")

// Create makes and configures the TUN device in the calling thread's
// network namespace. It needs CAP_NET_ADMIN.
func Create(cfg Config) (*Device, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if !cfg.Prefix.IsValid() || !cfg.Prefix.Addr().Is4() || !overlay.Contains(cfg.Prefix.Addr()) || cfg.Prefix.Bits() < 4 {
		return nil, fmt.Errorf("%w: address %v: want an IPv4 address in 240.0.0.0/4 with its cluster's prefix length", ErrConfig, cfg.Prefix)
	}
	if cfg.MTU < MinMTU || cfg.MTU > MaxMTU {
		return nil, fmt.Errorf("%w: MTU %d: want %d to %d", ErrConfig, cfg.MTU, MinMTU, MaxMTU)
	}
	if len(cfg.Name) > 15 {
		return nil, fmt.Errorf("%w: interface name %q: at most 15 bytes", ErrConfig, cfg.Name)
	}
	dev, err := wgtun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", cfg.Name, err)
	}
	name, err := dev.Name()
	if err != nil {
		dev.Close()
		return nil, err
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("configure TUN %s: netlink: %w", name, err)
	}
	d := &Device{Device: dev, name: name, prefix: cfg.Prefix, nl: nl}
	if err := d.configure(); err != nil {
		d.Close()
		return nil, fmt.Errorf("configure TUN %s: %w", name, err)
	}
	return d, nil
}

func (d *Device) configure() error {
	link, err := d.nl.LinkByName(d.name)
	if err != nil {
		return err
	}
	d.index = link.Attrs().Index
	addr := &netlink.Addr{IPNet: prefixToIPNet(d.prefix)}
	if err := d.nl.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("address %v: %w", d.prefix, err)
	}
	// Queue length: the kernel default (500 for TUN) drops bursts.
	if err := d.nl.LinkSetTxQLen(link, 1000); err != nil {
		return err
	}
	return d.nl.LinkSetUp(link)
}

// MTU returns the device's MTU, asked of the kernel in the device's own
// network namespace. wireguard-go's asks in the namespace of the calling
// thread, which is not the device's when the device was created in another
// namespace than the one its user runs in (the lab's tests, a daemon that
// moves between namespaces): it then fails, the wireguard-go device assumes
// 1420, and for any larger MTU pads full-sized packets beyond the MTU (a
// 1440-byte packet went out as a 1484-byte datagram, fragmented), and MTU
// changes made with ip link went unseen.
func (d *Device) MTU() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		// A closed Handle would ask in the caller's namespace.
		return 0, fmt.Errorf("MTU of %s: %w", d.name, os.ErrClosed)
	}
	link, err := d.nl.LinkByIndex(d.index)
	if err != nil {
		return 0, fmt.Errorf("MTU of %s: %w", d.name, err)
	}
	return link.Attrs().MTU, nil
}

// Close closes the device, which removes the interface.
func (d *Device) Close() error {
	err := d.Device.Close()
	d.mu.Lock()
	if !d.closed {
		d.closed = true
		d.nl.Close()
	}
	d.mu.Unlock()
	return err
}

// Name returns the interface name.
func (d *Device) Name() (string, error) { return d.name, nil }

// Prefix returns the configured address and prefix.
func (d *Device) Prefix() netip.Prefix { return d.prefix }
