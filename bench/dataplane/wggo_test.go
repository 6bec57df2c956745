package dataplane

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/security/keys"
)

// wgPort is the UDP port of the plain wireguard-go devices.
const wgPort = 51820

// wgNode is a stock wireguard-go device in a lab host.
type wgNode struct {
	host *netlab.Host
	name string // interface name (unique on the machine: the UAPI socket is shared by all namespaces)
	addr netip.Addr
	key  keys.WGPrivate
	proc *netlab.Proc
}

// startWG runs the stock wireguard-go binary wgBin in h with a kernel TUN
// named ifname and address addr/24, keyed by a fresh key.
func startWG(h *netlab.Host, wgBin, ifname string, addr netip.Addr) (*wgNode, error) {
	k, err := keys.NewWG()
	if err != nil {
		return nil, err
	}
	n := &wgNode{host: h, name: ifname, addr: addr, key: k}
	// `ip netns exec` then env exec the binary: the PID is wireguard-go's.
	n.proc, err = h.Start("env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", wgBin, "-f", ifname)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, err := h.Run(ctx, "ip", "link", "show", ifname); err == nil {
			break
		}
		select {
		case <-n.proc.Done():
			return nil, fmt.Errorf("wireguard-go in %s exited: %v\n%s", h.Name, n.proc.Wait(), n.proc.Output())
		case <-ctx.Done():
			return nil, fmt.Errorf("wireguard-go in %s: no %s after 10 s\n%s", h.Name, ifname, n.proc.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return n, nil
}

// connect configures n with wg(8): its key and port, the other node as its
// only peer at the other host's address, then the address and link.
func (n *wgNode) connect(ctx context.Context, other *wgNode, dir string) error {
	keyFile := filepath.Join(dir, n.name+".key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(n.key[:])+"\n"), 0o600); err != nil {
		return err
	}
	pub := other.key.Public()
	steps := [][]string{
		{"wg", "set", n.name, "private-key", keyFile, "listen-port", fmt.Sprint(wgPort),
			"peer", base64.StdEncoding.EncodeToString(pub[:]), "allowed-ips", other.addr.String() + "/32",
			"endpoint", fmt.Sprintf("%s:%d", other.host.Addr, wgPort)},
		{"ip", "addr", "add", n.addr.String() + "/24", "dev", n.name},
		{"ip", "link", "set", n.name, "up"},
	}
	if *mtuFlag != 0 {
		steps = append(steps, []string{"ip", "link", "set", n.name, "mtu", fmt.Sprint(*mtuFlag)})
	}
	for _, s := range steps {
		if _, err := n.host.Run(ctx, s...); err != nil {
			return err
		}
	}
	return nil
}

// wgAddrs returns two addresses of a /24 in 240.0.0.0/4 outside the PVC
// cluster's subnet.
func wgAddrs(pvc netip.Prefix) (netip.Addr, netip.Addr) {
	a := netip.AddrFrom4([4]byte{240, 254, 0, 1})
	if pvc.Overlaps(netip.PrefixFrom(a, 24)) {
		a = netip.AddrFrom4([4]byte{241, 254, 0, 1})
	}
	return a, a.Next()
}
