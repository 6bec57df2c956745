package tun

import (
	"net/netip"
	"testing"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/vishvananda/netlink"
)

// TestMTUFromAnotherNamespace: a device created in a lab host's namespace
// reports its own MTU to a caller in another namespace (wireguard-go asks
// from its own goroutines; its NativeTun asked in the caller's namespace,
// failed, and the device then padded 1440-byte packets beyond the MTU), and
// follows a change made with netlink.
func TestMTUFromAnotherNamespace(t *testing.T) {
	l := netlab.New(t, netlab.Spec{Internet: []string{"h"}})
	h := l.Internet("h")
	var d *Device
	if err := h.Do(func() error {
		var err error
		d, err = Create(Config{MTU: 1440, Prefix: netip.MustParsePrefix("240.9.0.1/16")})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if mtu, err := d.MTU(); err != nil || mtu != 1440 {
		t.Fatalf("MTU() outside the device's namespace = %d, %v; want 1440", mtu, err)
	}
	if err := h.Do(func() error {
		link, err := netlink.LinkByName(DefaultName)
		if err != nil {
			return err
		}
		return netlink.LinkSetMTU(link, 1380)
	}); err != nil {
		t.Fatal(err)
	}
	if mtu, err := d.MTU(); err != nil || mtu != 1380 {
		t.Fatalf("MTU() after ip link set mtu 1380 = %d, %v", mtu, err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.MTU(); err == nil {
		t.Error("MTU() of a closed device: no error")
	}
}
