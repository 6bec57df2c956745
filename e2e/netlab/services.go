package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// UPnPPort is the TCP port of miniupnpd's HTTP server on an upnp site's
// router (LAN side).
const UPnPPort = 5000

// UPnPRootDesc returns the URL of the IGD root description of an upnp
// site's router (clients that know it skip the ~2 s SSDP search).
func (s *Site) UPnPRootDesc() string {
	return fmt.Sprintf("http://%s:%d/rootDesc.xml", nth(s.LAN, 1), UPnPPort)
}

// miniupnpdNFT is the nftables structure miniupnpd (nftables backend) fills
// in. Debian's nft_init.sh makes a forward chain with policy drop; here the
// chains only jump, and filtering stays with the router's iptables rules.
const miniupnpdNFT = `table inet filter {
	chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
	chain miniupnpd { }
	chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
	chain postrouting { type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; }
	chain prerouting_miniupnpd { }
	chain postrouting_miniupnpd { }
}
`

// miniupnpdConf returns the configuration of an upnp site's miniupnpd.
// The lab's "public" ranges are reserved addresses to miniupnpd, which then
// refuses every mapping unless STUN tells it that it is behind a 1:1 NAT:
// hence ext_perform_stun against the lab's STUN server.
func miniupnpdConf(s *Site, leaseFile string) string {
	return strings.Join([]string{
		"ext_ifname=wan0",
		"listening_ip=lan0",
		fmt.Sprintf("http_port=%d", UPnPPort),
		"enable_natpmp=yes",
		"enable_upnp=yes",
		"secure_mode=yes",
		"system_uptime=yes",
		"ext_perform_stun=yes",
		"ext_stun_host=" + stunAddr1.String(),
		"ext_stun_port=3478",
		"lease_file=" + leaseFile,
		"uuid=3b6a2f0e-7c1d-4e58-9a43-" + fmt.Sprintf("%012x", lanIndex(s.LAN)),
		"upnp_table_name=filter",
		"upnp_nat_table_name=filter",
		"upnp_forward_chain=miniupnpd",
		"upnp_nat_chain=prerouting_miniupnpd",
		"upnp_nat_postrouting_chain=postrouting_miniupnpd",
		"allow 1024-65535 198.18.0.0/15 1024-65535",
		"deny 0-65535 0.0.0.0/0 0-65535",
	}, "\n") + "\n"
}

// startServices starts the lab's own servers: the STUN server and each upnp
// site's miniupnpd, and waits until they answer.
func (l *Lab) startServices(ctx context.Context) error {
	stun := l.internet["stun"]
	if stun == nil {
		return nil
	}
	p, err := stun.Start("stund", "-h", stunAddr1.String(), "-a", stunAddr2.String())
	if err != nil {
		return err
	}
	if err := waitUDPService(p, 300*time.Millisecond); err != nil {
		return err
	}
	for _, s := range l.sites {
		if s.Spec.Kind != UPnP {
			continue
		}
		r := s.Router
		if _, err := runIn(ctx, r, miniupnpdNFT, "nft", "-f", "-"); err != nil {
			return err
		}
		conf := filepath.Join(l.run.dir, r.Name+"-miniupnpd.conf")
		if err := os.WriteFile(conf, []byte(miniupnpdConf(s, filepath.Join(l.run.dir, r.Name+"-upnp.leases"))), 0o644); err != nil {
			return err
		}
		p, err := r.Start("miniupnpd", "-d", "-f", conf, "-P", filepath.Join(l.run.dir, r.Name+"-miniupnpd.pid"))
		if err != nil {
			return err
		}
		addr := fmt.Sprintf("%s:%d", nth(s.LAN, 1), UPnPPort)
		if err := waitTCP(ctx, r, addr, p, 15*time.Second); err != nil {
			return fmt.Errorf("miniupnpd on %s: %w\n%s", r.Name, err, p.Output())
		}
	}
	return nil
}

// waitUDPService gives a UDP server that has no readiness signal a moment
// and checks that it did not exit.
func waitUDPService(p *Proc, d time.Duration) error {
	select {
	case <-p.Done():
		return fmt.Errorf("%s exited at once: %v\n%s", p.Argv[0], p.Wait(), p.Output())
	case <-time.After(d):
		return nil
	}
}

// waitTCP waits until addr accepts TCP connections from inside h, or the
// process exits, or the timeout passes.
func waitTCP(ctx context.Context, h *Host, addr string, p *Proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var c net.Conn
		err := h.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", addr, 200*time.Millisecond)
			return err
		})
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("exited: %v", p.Wait())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %v: %w", addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runIn runs argv in h with stdin and returns its output.
func runIn(ctx context.Context, h *Host, stdin string, argv ...string) (string, error) {
	cmd := h.Command(ctx, argv...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", h.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// runOut runs a command and returns its standard output.
func runOut(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, name, args...).Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return string(out), nil
}

func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}
