package cluster

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
	"github.com/pvc-project/pvc/pvcd/daemon"
	"github.com/pvc-project/pvc/security/cert"
	"github.com/pvc-project/pvc/security/keys"
)

// TestForeignMasterCannotReach: a second cluster with the same name and
// the same subnet, made by another master, whose bundle names its own
// broker b2 and the real cluster's broker b1, enrolls a host "evil"
// through b2 (b1 already serves the real cluster and refuses the foreign
// master's sessions). evil then tries every way in, and nothing arrives:
//   - through its own pvcd: ping, TCP and UDP to the real peers' virtual
//     addresses (those the foreign cluster does not use itself);
//   - around it: a stock wireguard-go device in evil's host that claims
//     cone1's virtual address, has the real peers' WireGuard public keys
//     and sends straight to their pvcd's UDP sockets.
//
// Echo servers on the targets' virtual addresses see nothing and the
// targets' TUN devices receive no packet, while a counter on the public
// target's host shows that evil's datagrams did reach its pvcd's socket.
func TestForeignMasterCannotReach(t *testing.T) {
	netlab.RequireTools(t, "ping", "wg", "iptables")
	c := newCluster(t, netlab.Spec{Internet: []string{"b1", "b2"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public},
		{Name: "cone", Kind: netlab.Cone},
		{Name: "fw", Kind: netlab.Firewall},
		{Name: "rmast", Kind: netlab.Public},
		{Name: "evil", Kind: netlab.Public},
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	wgBin := filepath.Join(t.TempDir(), "wireguard-go")
	if out, err := exec.Command(goTool(), "build", "-o", wgBin, "golang.zx2c4.com/wireguard").CombinedOutput(); err != nil {
		t.Fatalf("build wireguard-go: %v\n%s", err, out)
	}
	tok, err := c.Token(2)
	if err != nil {
		t.Fatal(err)
	}
	mast := up(t, c, c.Lab.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey())
	cone := up(t, c, c.Lab.Site("cone").Hosts[0], "cone1", "--join", tok)
	fw := up(t, c, c.Lab.Site("fw").Hosts[0], "fw1", "--join", tok)
	if err := c.WaitPeers(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}

	// The foreign cluster: same name, same subnet, another master key.
	r := vcluster.NewT(t, c.Lab, c.Name, bin)
	if err := r.StartBroker(c.Lab.Internet("b2")); err != nil {
		t.Fatal(err)
	}
	r.Brokers = append(r.Brokers, c.Brokers...) // b2, then the real cluster's b1
	r.InitFlags = []string{"--subnet", mast.Status.Subnet.String()}
	if err := r.Init(); err != nil {
		t.Fatal(err)
	}
	rtok, err := r.Token(1)
	if err != nil {
		t.Fatal(err)
	}
	rmast := up(t, r, c.Lab.Site("rmast").Hosts[0], "rmaster", "--master-key", r.MasterKey())
	evil := up(t, r, c.Lab.Site("evil").Hosts[0], "evil", "--join", rtok)
	t.Logf("evil enrolled by the foreign master: %v in %v (the real subnet)", evil.Status.VirtualIP, evil.Status.Subnet)
	for _, b := range evil.Status.Brokers {
		if strings.HasPrefix(c.Brokers[0], b.Addr+"=") && b.Connected {
			t.Errorf("the real cluster's broker %s accepted a session of the foreign cluster", b.Addr)
		}
	}

	// Targets: echo servers on the real peers' virtual addresses, and the
	// direct paths the real peers use (so evil knows their sockets).
	targets := []*vcluster.Node{mast, fw}
	for _, n := range targets {
		if out, err := cone.Host.Run(ctx, "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", n.Status.VirtualIP.String()); err != nil {
			t.Fatalf("cone1 -> %s before the attack: %v\n%s", n.Name, err, out)
		}
	}
	echo := map[string]*netlab.Echo{}
	socket := map[string]netip.AddrPort{}
	for _, n := range targets {
		e, err := netlab.StartEcho(n.Host, n.Status.VirtualIP, 8080)
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		echo[n.Name] = e
		if socket[n.Name], err = directSocket(ctx, cone, n.Name); err != nil {
			t.Fatal(err)
		}
	}
	rx0 := map[string]int{}
	for _, n := range targets {
		rx0[n.Name] = tunRx(t, ctx, n)
	}
	if _, err := mast.Host.Run(ctx, "iptables", "-I", "INPUT", "-s", evil.Host.Addr.String(), "-p", "udp", "-m", "comment", "--comment", "pvc-evil"); err != nil {
		t.Fatal(err)
	}

	// 1. Through evil's own pvcd.
	// (The foreign master gave its own hosts addresses that the real
	// cluster uses too: through evil's pvcd those reach the foreign hosts.)
	foreign := map[netip.Addr]bool{evil.Status.VirtualIP: true, rmast.Status.VirtualIP: true}
	attack := func(how string, viaPVC bool) {
		for _, n := range targets {
			dst := netip.AddrPortFrom(n.Status.VirtualIP, 8080)
			if viaPVC && foreign[n.Status.VirtualIP] {
				continue
			}
			if _, err := netlab.AskTCP(evil.Host, dst, 1500*time.Millisecond); err == nil {
				t.Errorf("%s: TCP evil -> %s connected", how, n.Name)
			}
			sock, err := netlab.UDPSocket(evil.Host, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := netlab.AskUDP(sock, dst, 1500*time.Millisecond); !errors.Is(err, netlab.ErrNoAnswer) {
				t.Errorf("%s: UDP evil -> %s: %v, want no answer", how, n.Name, err)
			}
			sock.Close()
			if out, err := evil.Host.Run(ctx, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", n.Status.VirtualIP.String()); err == nil {
				t.Errorf("%s: ping evil -> %s answered:\n%s", how, n.Name, out)
			}
		}
	}
	attack("through evil's pvcd", true)

	// 2. Around it: plain WireGuard with the real peers' public keys,
	// claiming cone1's address, straight to their sockets.
	dev := "wge" + c.Lab.ID
	wg, err := evil.Host.Start("env", "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", wgBin, "-f", dev)
	if err != nil {
		t.Fatal(err)
	}
	defer wg.Stop(time.Second)
	if err := waitLink(ctx, evil.Host, dev, wg); err != nil {
		t.Fatal(err)
	}
	key, err := keys.NewWG()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "evil.key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(key[:])+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	set := []string{"wg", "set", dev, "private-key", keyFile}
	for _, n := range targets {
		pub := certOf(t, n).WGKey
		set = append(set, "peer", base64.StdEncoding.EncodeToString(pub[:]), "allowed-ips", n.Status.VirtualIP.String()+"/32",
			"endpoint", socket[n.Name].String(), "persistent-keepalive", "1")
	}
	steps := [][]string{set, {"ip", "addr", "add", cone.Status.VirtualIP.String() + "/32", "dev", dev}, {"ip", "link", "set", dev, "up"}}
	for _, n := range targets {
		steps = append(steps, []string{"ip", "route", "replace", n.Status.VirtualIP.String() + "/32", "dev", dev, "src", cone.Status.VirtualIP.String()})
	}
	for _, s := range steps {
		if _, err := evil.Host.Run(ctx, s...); err != nil {
			t.Fatal(err)
		}
	}
	attack("plain WireGuard from evil", false)

	// Nothing arrived.
	for _, n := range targets {
		if seen := echo[n.Name].Seen(); len(seen) > 0 {
			t.Errorf("the echo on %s saw %v", n.Name, seen)
		}
		if rx := tunRx(t, ctx, n); rx != rx0[n.Name] {
			t.Errorf("%s's TUN received %d packets during the attack", n.Name, rx-rx0[n.Name])
		}
	}
	out, err := mast.Host.Run(ctx, "iptables", "-nvxL", "INPUT")
	if err != nil {
		t.Fatal(err)
	}
	if n := evilCount(out); n == 0 {
		t.Errorf("no datagram of evil reached the master's host: the attack did not test the data plane\n%s", out)
	} else {
		t.Logf("%d datagrams from evil reached the master's host and were dropped by its pvcd", n)
	}
	if out, err := wgShow(ctx, evil.Host, dev); err == nil && strings.Contains(out, "latest handshake") {
		t.Errorf("evil's WireGuard completed a handshake:\n%s", out)
	}
	// The real peers never learned of the foreign ones.
	for _, n := range []*vcluster.Node{mast, cone, fw} {
		ps, err := n.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Name == "evil" || p.Name == "rmaster" {
				t.Errorf("%s lists the foreign peer %s", n.Name, p.Name)
			}
		}
	}
	if out, _ := cone.Host.Run(ctx, "dig", "+short", "@"+cone.Status.VirtualIP.String(), "evil.lab.pvc", "A"); strings.TrimSpace(out) != "" {
		t.Errorf("cone1's DNS resolves evil.lab.pvc: %q", out)
	}
}

// goTool returns the go command.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// directSocket waits until from has a direct path to the named peer and
// returns that peer's socket address.
func directSocket(ctx context.Context, from *vcluster.Node, name string) (netip.AddrPort, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		p, err := from.Peer(ctx, name)
		if err == nil && p.Path == "direct" {
			return netip.ParseAddrPort(p.Remote)
		}
		if time.Now().After(deadline) {
			return netip.AddrPort{}, fmt.Errorf("%s has no direct path to %s: %+v, %v", from.Name, name, p, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// certOf reads a node's certificate from its state dir.
func certOf(t *testing.T, n *vcluster.Node) *cert.Cert {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(n.State, daemon.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cert.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tunRx returns the packets the node's TUN device has received (written
// into the kernel by pvcd).
func tunRx(t *testing.T, ctx context.Context, n *vcluster.Node) int {
	t.Helper()
	b, err := n.Host.Run(ctx, "cat", "/sys/class/net/pvc0/statistics/rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.Atoi(strings.TrimSpace(b))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitLink waits until the interface exists in h.
func waitLink(ctx context.Context, h *netlab.Host, dev string, p *netlab.Proc) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if _, err := h.Run(ctx, "ip", "link", "show", dev); err == nil {
			return nil
		}
		select {
		case <-p.Done():
			return fmt.Errorf("wireguard-go exited: %v\n%s", p.Wait(), p.Output())
		default:
		}
	}
	return fmt.Errorf("no %s in %s after 10 s", dev, h.Name)
}

func wgShow(ctx context.Context, h *netlab.Host, dev string) (string, error) {
	return h.Run(ctx, "wg", "show", dev)
}

// evilCount returns the packet count of the rule commented pvc-evil in
// `iptables -nvxL` output.
func evilCount(out string) int {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "pvc-evil") {
			f := strings.Fields(line)
			if len(f) > 0 {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
	}
	return 0
}
