package cluster

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/pvcd/control"
)

// TestClusterAcrossNATs: a broker on the Internet, the master's pvcd at a
// public site, and two hosts enrolled with a token through the broker at a
// cone NAT site and a firewall site. They reach each other by name (ping
// through pvcd's DNS), carry a TCP transfer with checksum, answer dig A and
// PTR, show their paths in `pvcd peers`, and leave nothing behind after
// `pvcd down`.
func TestClusterAcrossNATs(t *testing.T) {
	netlab.RequireTools(t, "ping", "dig")
	l := netlab.New(t, netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{
		{Name: "mast", Kind: netlab.Public},
		{Name: "cone", Kind: netlab.Cone},
		{Name: "fw", Kind: netlab.Firewall},
	}})
	c := &cluster{t: t, lab: l, dir: t.TempDir(), nodes: map[string]*node{}}
	c.startBroker(l.Internet("b1"))
	c.pvcd("cluster", "init", "lab", "--broker", c.broker, "--out", c.dir)
	tok := strings.TrimSpace(c.pvcd("token", "--master-key", filepath.Join(c.dir, "lab.key"), "--uses", "2", "--ttl", "1h"))

	start := time.Now()
	mast := c.up(l.Site("mast").Hosts[0], "master", "--master-key", filepath.Join(c.dir, "lab.key"))
	cone := c.up(l.Site("cone").Hosts[0], "cone1", "--join", tok)
	fw := c.up(l.Site("fw").Hosts[0], "fw1", "--join", tok)
	t.Logf("three pvcd up (master, two enrolled through the broker) in %v", time.Since(start).Round(time.Millisecond))
	for _, n := range []*node{mast, cone, fw} {
		c.waitPeers(n, 20*time.Second)
	}
	t.Logf("every peer knows every other after %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Ping by name, through pvcd's DNS and the overlay.
	for _, pair := range [][2]*node{{cone, fw}, {fw, cone}, {cone, mast}, {mast, fw}} {
		from, to := pair[0], pair[1]
		out, err := from.host.Run(ctx, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", to.name+".lab.pvc")
		if err != nil || !strings.Contains(out, " 0% packet loss") {
			t.Errorf("ping %s -> %s.lab.pvc: %v\n%s", from.name, to.name, err, out)
		}
	}
	// dig A and PTR.
	out, err := cone.host.Run(ctx, "dig", "+short", "@"+cone.st.VirtualIP.String(), "fw1.lab.pvc", "A")
	if err != nil || strings.TrimSpace(out) != fw.st.VirtualIP.String() {
		t.Errorf("dig fw1.lab.pvc A: %q, %v; want %s", out, err, fw.st.VirtualIP)
	}
	out, err = cone.host.Run(ctx, "dig", "+short", "@"+cone.st.VirtualIP.String(), "-x", fw.st.VirtualIP.String())
	if err != nil || strings.TrimSpace(out) != "fw1.lab.pvc." {
		t.Errorf("dig -x %s: %q, %v; want fw1.lab.pvc.", fw.st.VirtualIP, out, err)
	}
	// The hosts file carries the names too.
	if b, _ := os.ReadFile(cone.hosts); !strings.Contains(string(b), fw.st.VirtualIP.String()+" fw1.lab.pvc") {
		t.Errorf("cone1's hosts file lacks fw1:\n%s", b)
	}

	// 100 MiB of TCP from the cone host to the firewall host, checked.
	mbps := transfer(t, cone.host, fw.host, fw.st.VirtualIP, 100<<20)
	t.Logf("100 MiB cone1 -> fw1 over the overlay: %.0f Mbit/s, SHA-256 ok", mbps)

	// Paths as pvcd peers shows them.
	for _, n := range []*node{mast, cone, fw} {
		var rows []string
		for _, p := range n.peers(t) {
			rows = append(rows, p.Name+"="+p.Path+" "+p.Remote)
			if p.Path == "direct" && p.LastHandshake.IsZero() {
				t.Errorf("%s: %s is direct but never shook hands", n.name, p.Name)
			}
		}
		t.Logf("pvcd peers on %s: %s", n.name, strings.Join(rows, ", "))
	}
	if p := peerOf(t, cone, "fw1"); p.Path != "direct" || p.BytesOut < 100<<20 {
		t.Errorf("cone1 -> fw1: %+v, want a direct path that carried the 100 MiB", p)
	}
	// pvcd ping names the path.
	cl := control.NewClient(cone.state)
	r, err := cl.Ping(ctx, "fw1")
	if err != nil || !strings.HasPrefix(r.Path, "direct") {
		t.Errorf("pvcd ping fw1: %+v, %v", r, err)
	}
	if _, err := cl.Ping(ctx, "nobody"); err == nil || !strings.Contains(err.Error(), "unknown peer") {
		t.Errorf("pvcd ping nobody: %v", err)
	}

	// pvcd down: the TUN device and the names are gone.
	if err := cl.Down(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cone.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("pvcd did not exit after pvcd down")
	}
	if out, _ := cone.host.Run(ctx, "ip", "link", "show", "pvc0"); !strings.Contains(out, "does not exist") {
		t.Errorf("pvc0 still exists after pvcd down: %s", out)
	}
	if b, _ := os.ReadFile(cone.hosts); strings.Contains(string(b), "lab.pvc") {
		t.Errorf("names left in the hosts file after pvcd down:\n%s", b)
	}
	if _, err := os.Stat(control.SocketPath(cone.state)); !os.IsNotExist(err) {
		t.Errorf("control socket left after pvcd down: %v", err)
	}
}

func peerOf(t *testing.T, n *node, name string) control.Peer {
	for _, p := range n.peers(t) {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("%s does not list %s", n.name, name)
	return control.Peer{}
}

// transfer sends size bytes over TCP from one lab host to an address of
// another and checks them with SHA-256; it returns Mbit/s.
func transfer(t *testing.T, from, to *netlab.Host, dst netip.Addr, size int) float64 {
	t.Helper()
	var ln net.Listener
	if err := to.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		got <- h.Sum(nil)
	}()
	var c net.Conn
	if err := from.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 13)
	}
	h := sha256.New()
	start := time.Now()
	for sent := 0; sent < size; sent += len(data) {
		if _, err := c.Write(data); err != nil {
			t.Fatal(err)
		}
		h.Write(data)
	}
	c.Close()
	sum := <-got
	if string(sum) != string(h.Sum(nil)) {
		t.Fatal("checksum mismatch")
	}
	return float64(size) * 8 / time.Since(start).Seconds() / 1e6
}
