package netlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Site is one site of a built lab.
type Site struct {
	Spec SiteSpec
	// Hosts are the site's hosts, in order (NAME-h1, NAME-h2, ...).
	Hosts []*Host
	// Router is the site's router (its LAN's gateway); nil for public and
	// hostfw sites. Outer is a double-nat site's carrier NAT; else nil.
	Router, Outer *Host
	// PublicAddr is the address the Internet sees the site's traffic come
	// from: the (outer) router's WAN address for NAT sites, the (first)
	// host's own address otherwise. WAN is the router's Internet address.
	PublicAddr, WAN netip.Addr
	// LAN is the site's LAN prefix (198.18.N.0/24); for public and hostfw
	// sites the zero Prefix.
	LAN netip.Prefix
}

// Name returns the site's name.
func (s *Site) Name() string { return s.Spec.Name }

// Kind returns the site's kind.
func (s *Site) Kind() Kind { return s.Spec.Kind }

// Lab is a built lab. Close tears it down.
type Lab struct {
	ID   string // the run ID: every namespace is named "pvc" + ID + "-" + role
	Spec Spec

	inet     string           // namespace of the Internet bridge
	internet map[string]*Host // Internet hosts by name (including "stun")
	sites    []*Site
	all      []*Host // every namespace's host, creation order
	run      *runDir
	logf     func(format string, args ...any)

	mu     sync.Mutex // guards procs, nproc, delays, closed
	procs  []*Proc
	nproc  int
	delays []*delayLine
	closed bool

	nextPort int // next Internet bridge port number (build time only)
	nextWAN  int // next site WAN address (build time only)
}

// Options tune Build.
type Options struct {
	// Logf receives progress lines; nil: quiet.
	Logf func(format string, args ...any)
}

// Build creates the lab that spec describes. On error it removes whatever
// it had created. It first sweeps leftovers of dead runs.
func Build(ctx context.Context, spec Spec, opt Options) (*Lab, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := checkTools(spec); err != nil {
		return nil, err
	}
	_, _ = Sweep()
	run, err := newRunDir()
	if err != nil {
		return nil, fmt.Errorf("lab run directory: %w", err)
	}
	l := &Lab{
		ID: run.id, Spec: spec, run: run, logf: opt.Logf,
		inet: "pvc" + run.id + "-inet", internet: map[string]*Host{},
		nextWAN: 100,
	}
	if l.logf == nil {
		l.logf = func(string, ...any) {}
	}
	if err := l.build(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("build lab %s: %w", l.ID, err), l.Close())
	}
	return l, nil
}

// Tools returns the programs a lab of this spec runs.
func (s Spec) Tools() []string {
	tools := []string{"ip", "iptables-restore"}
	for _, st := range s.Sites {
		if st.Shape.Rate > 0 {
			tools = append(tools, "tc")
		}
		if st.Kind == UPnP {
			tools = append(tools, "miniupnpd", "stund", "nft")
		}
	}
	return dedup(tools)
}

func dedup(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// ErrMissingTool is wrapped when a program the lab needs is not installed.
var ErrMissingTool = errors.New("missing tool")

func checkTools(spec Spec) error {
	var missing []string
	for _, t := range spec.Tools() {
		if _, err := lookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (run scripts/install-deps.sh as root)", ErrMissingTool, strings.Join(missing, ", "))
	}
	return nil
}

func (l *Lab) build(ctx context.Context) error {
	start := time.Now()
	if err := l.addNS(ctx, l.inet, false); err != nil {
		return err
	}
	if err := l.ip(ctx, l.inet, "link add br0 type bridge", "link set br0 up"); err != nil {
		return err
	}
	needSTUN := false
	for _, st := range l.Spec.Sites {
		needSTUN = needSTUN || st.Kind == UPnP
	}
	if needSTUN {
		h, err := l.addInternetHost(ctx, "stun", stunAddr1, stunAddr2)
		if err != nil {
			return err
		}
		l.internet["stun"] = h
	}
	for i, name := range l.Spec.Internet {
		h, err := l.addInternetHost(ctx, name, inetAddr(10+i))
		if err != nil {
			return err
		}
		l.internet[name] = h
	}
	for i, st := range l.Spec.Sites {
		s, err := l.addSite(ctx, i+1, st)
		if err != nil {
			return fmt.Errorf("site %s: %w", st.Name, err)
		}
		l.sites = append(l.sites, s)
	}
	if err := l.routeFirewallSites(ctx); err != nil {
		return err
	}
	if err := l.shapeAndFilter(ctx); err != nil {
		return err
	}
	if err := l.startServices(ctx); err != nil {
		return err
	}
	l.logf("lab %s: %d namespaces built in %v", l.ID, len(l.all)+1, time.Since(start).Round(time.Millisecond))
	return nil
}

// addNS creates a namespace with loopback up and IPv6 off (no router
// solicitations or DAD noise), forwarding on for routers.
func (l *Lab) addNS(ctx context.Context, ns string, forward bool) error {
	if err := runCmd(ctx, "", "ip", "netns", "add", ns); err != nil {
		return err
	}
	sysctls := map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
	}
	if forward {
		sysctls["net/ipv4/ip_forward"] = "1"
	}
	h := &Host{NS: ns}
	return h.Do(func() error {
		for k, v := range sysctls {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				return fmt.Errorf("%s: sysctl %s: %w", ns, k, err)
			}
		}
		return nil
	})
}

// ip runs `ip -n ns -batch -` with the given commands.
func (l *Lab) ip(ctx context.Context, ns string, cmds ...string) error {
	return runCmd(ctx, strings.Join(append(cmds, "link set lo up"), "\n")+"\n", "ip", "-n", ns, "-batch", "-")
}

func (l *Lab) newHost(name string, addr netip.Addr, site *Site) *Host {
	h := &Host{Name: name, NS: "pvc" + l.ID + "-" + name, Addr: addr, Site: site, lab: l}
	l.all = append(l.all, h)
	return h
}

// hostEtc gives a lab host its own hosts file and a resolv.conf that names
// no server, so that nothing in the lab asks the real host's resolver.
func (l *Lab) hostEtc(h *Host) error {
	if err := h.WriteEtc("resolv.conf", []byte("# pvc lab host: no resolver\noptions timeout:1 attempts:1\n")); err != nil {
		return err
	}
	return h.WriteEtc("hosts", []byte(fmt.Sprintf("127.0.0.1 localhost\n%s %s\n", h.Addr, h.Name)))
}

// plugInternet connects a namespace to the Internet bridge with a veth
// (ifname inside the namespace) and returns the bridge port's name.
func (l *Lab) plugInternet(ctx context.Context, ns, ifname string) (string, error) {
	l.nextPort++
	port := fmt.Sprintf("p%d", l.nextPort)
	if err := runCmd(ctx, "", "ip", "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", l.inet); err != nil {
		return "", err
	}
	return port, l.ip(ctx, l.inet, "link set "+port+" master br0", "link set "+port+" up")
}

func (l *Lab) addInternetHost(ctx context.Context, name string, addrs ...netip.Addr) (*Host, error) {
	h := l.newHost(name, addrs[0], nil)
	if err := l.addNS(ctx, h.NS, false); err != nil {
		return nil, err
	}
	if _, err := l.plugInternet(ctx, h.NS, "eth0"); err != nil {
		return nil, err
	}
	cmds := []string{}
	for _, a := range addrs {
		cmds = append(cmds, fmt.Sprintf("addr add %s/24 dev eth0", a))
	}
	cmds = append(cmds, "link set eth0 up")
	if err := l.ip(ctx, h.NS, cmds...); err != nil {
		return nil, err
	}
	return h, l.hostEtc(h)
}

// wanAddr hands out the next site WAN address (.100 and up).
func (l *Lab) wanAddr() netip.Addr {
	a := inetAddr(l.nextWAN)
	l.nextWAN++
	return a
}

func (l *Lab) addSite(ctx context.Context, n int, st SiteSpec) (*Site, error) {
	s := &Site{Spec: st}
	if !st.Kind.routed() {
		for i := 1; i <= st.hosts(); i++ {
			h := l.newHost(fmt.Sprintf("%s-h%d", st.Name, i), l.wanAddr(), s)
			if err := l.addNS(ctx, h.NS, false); err != nil {
				return nil, err
			}
			if _, err := l.plugInternet(ctx, h.NS, "eth0"); err != nil {
				return nil, err
			}
			if err := l.ip(ctx, h.NS, fmt.Sprintf("addr add %s/24 dev eth0", h.Addr), "link set eth0 up"); err != nil {
				return nil, err
			}
			if err := l.hostEtc(h); err != nil {
				return nil, err
			}
			s.Hosts = append(s.Hosts, h)
		}
		s.PublicAddr = s.Hosts[0].Addr
		return s, nil
	}
	s.LAN = lanPrefix(n)
	// The router that faces the Internet: the site's own, or the carrier's.
	edgeName, edgeLAN := st.Name+"-r", s.LAN
	if st.Kind == DoubleNAT {
		edgeName, edgeLAN = st.Name+"-cgn", cgnPrefix(n)
	}
	wan := l.wanAddr()
	edge := l.newHost(edgeName, nth(edgeLAN, 1), s)
	if err := l.addRouter(ctx, edge, edgeLAN); err != nil {
		return nil, err
	}
	if _, err := l.plugInternet(ctx, edge.NS, "wan0"); err != nil {
		return nil, err
	}
	if err := l.ip(ctx, edge.NS, fmt.Sprintf("addr add %s/24 dev wan0", wan), "link set wan0 up"); err != nil {
		return nil, err
	}
	s.PublicAddr, s.WAN = wan, wan
	s.Router = edge
	if st.Kind == DoubleNAT {
		s.Outer = edge
		inner := l.newHost(st.Name+"-r", nth(s.LAN, 1), s)
		if err := l.addRouter(ctx, inner, s.LAN); err != nil {
			return nil, err
		}
		innerWAN := nth(edgeLAN, 2)
		if err := l.plugLAN(ctx, edge, inner, "wan0", innerWAN, nth(edgeLAN, 1)); err != nil {
			return nil, err
		}
		s.Router = inner
	}
	for i := 1; i <= st.hosts(); i++ {
		h := l.newHost(fmt.Sprintf("%s-h%d", st.Name, i), nth(s.LAN, 1+i), s)
		if err := l.addNS(ctx, h.NS, false); err != nil {
			return nil, err
		}
		if err := l.plugLAN(ctx, s.Router, h, "eth0", h.Addr, nth(s.LAN, 1)); err != nil {
			return nil, err
		}
		if err := l.hostEtc(h); err != nil {
			return nil, err
		}
		s.Hosts = append(s.Hosts, h)
	}
	if st.Kind == Firewall {
		s.PublicAddr = s.Hosts[0].Addr // routed, not translated
	}
	return s, nil
}

// addRouter creates a router namespace with a LAN bridge lan0.
func (l *Lab) addRouter(ctx context.Context, r *Host, lan netip.Prefix) error {
	if err := l.addNS(ctx, r.NS, true); err != nil {
		return err
	}
	if err := l.ip(ctx, r.NS, "link add lan0 type bridge", fmt.Sprintf("addr add %s/24 dev lan0", nth(lan, 1)), "link set lan0 up"); err != nil {
		return err
	}
	return l.hostEtc(r)
}

// plugLAN connects h to router r's LAN bridge, as interface ifname with
// address addr and a default route via gw.
func (l *Lab) plugLAN(ctx context.Context, r, h *Host, ifname string, addr, gw netip.Addr) error {
	l.nextPort++
	port := fmt.Sprintf("l%d", l.nextPort)
	if err := runCmd(ctx, "", "ip", "link", "add", ifname, "netns", h.NS, "type", "veth", "peer", "name", port, "netns", r.NS); err != nil {
		return err
	}
	if err := l.ip(ctx, r.NS, "link set "+port+" master lan0", "link set "+port+" up"); err != nil {
		return err
	}
	return l.ip(ctx, h.NS, fmt.Sprintf("addr add %s/24 dev %s", addr, ifname), "link set "+ifname+" up", "route add default via "+gw.String())
}

// internetAttached returns the namespaces with an address on the Internet
// bridge: Internet hosts, public and hostfw hosts, and the sites' edge
// routers.
func (l *Lab) internetAttached() []*Host {
	var out []*Host
	for _, h := range l.all {
		if h.Site == nil || !h.Site.Spec.Kind.routed() || h == h.Site.Outer || (h == h.Site.Router && h.Site.Outer == nil) {
			out = append(out, h)
		}
	}
	return out
}

// routeFirewallSites makes the LANs of firewall sites (routed, not NATed)
// reachable from the Internet through their routers.
func (l *Lab) routeFirewallSites(ctx context.Context) error {
	var routes []string
	for _, s := range l.sites {
		if s.Spec.Kind == Firewall {
			routes = append(routes, fmt.Sprintf("route add %s via %s", s.LAN, s.WAN))
		}
	}
	if len(routes) == 0 {
		return nil
	}
	for _, h := range l.internetAttached() {
		var own []string
		for _, r := range routes {
			if h.Site == nil || h.Site.Spec.Kind != Firewall || !strings.Contains(r, h.Site.LAN.String()) {
				own = append(own, r)
			}
		}
		if err := l.ip(ctx, h.NS, own...); err != nil {
			return err
		}
	}
	return nil
}

// shapeAndFilter installs each namespace's iptables rules, the delay lines
// they feed, and tbf rate limits.
func (l *Lab) shapeAndFilter(ctx context.Context) error {
	for _, s := range l.sites {
		st := s.Spec
		type edge struct {
			h     *Host
			rules string
			wanIf string
		}
		var edges []edge
		if !st.Kind.routed() {
			for _, h := range s.Hosts {
				edges = append(edges, edge{h, hostRules(st.Kind, st.blocksUDP(), st.Shape), "eth0"})
			}
		} else if s.Outer != nil {
			edges = append(edges, edge{s.Outer, routerRules(Cone, false, cgnPrefix(lanIndex(s.LAN)), st.Shape), "wan0"})
			edges = append(edges, edge{s.Router, routerRules(st.Kind, st.blocksUDP(), s.LAN, Shape{}), ""})
		} else {
			edges = append(edges, edge{s.Router, routerRules(st.Kind, st.blocksUDP(), s.LAN, st.Shape), "wan0"})
		}
		for _, e := range edges {
			if e.wanIf != "" && needsDelayLine(st.Shape) {
				d, err := startDelayLine(e.h.NS, st.Shape.Delay, st.Shape.Loss)
				if err != nil {
					return err
				}
				l.mu.Lock()
				l.delays = append(l.delays, d)
				l.mu.Unlock()
			}
			if strings.TrimSpace(e.rules) != "" {
				if _, err := runIn(ctx, e.h, e.rules, "iptables-restore"); err != nil {
					return err
				}
			}
			if e.wanIf != "" && st.Shape.Rate > 0 {
				if err := l.rateLimit(ctx, e.h, e.wanIf, st.Shape.Rate); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func lanIndex(p netip.Prefix) int { return int(p.Addr().As4()[2]) }

// rateLimit puts tbf on both ends of h's WAN veth.
func (l *Lab) rateLimit(ctx context.Context, h *Host, wanIf string, rate uint64) error {
	if err := runCmd(ctx, "", "tc", append([]string{"-n", h.NS}, tbfArgs(wanIf, rate)...)...); err != nil {
		return err
	}
	// The other end: the bridge port in the Internet namespace.
	peer, err := vethPeer(ctx, h.NS, wanIf, l.inet)
	if err != nil {
		return err
	}
	return runCmd(ctx, "", "tc", append([]string{"-n", l.inet}, tbfArgs(peer, rate)...)...)
}

// vethPeer returns the name, in namespace peerNS, of the other end of ns's
// veth ifname.
func vethPeer(ctx context.Context, ns, ifname, peerNS string) (string, error) {
	// "12: wan0@if13: ..." -> 13. (/sys cannot tell: it shows the
	// namespace that mounted it, not the caller's.)
	out, err := runOut(ctx, "ip", "-n", ns, "-o", "link", "show", ifname)
	if err != nil {
		return "", err
	}
	var idx int
	i := strings.Index(out, "@if")
	if i < 0 {
		return "", fmt.Errorf("veth peer of %s in %s: %q", ifname, ns, out)
	}
	if _, err := fmt.Sscanf(out[i+3:], "%d", &idx); err != nil {
		return "", fmt.Errorf("veth peer of %s in %s: %q", ifname, ns, out)
	}
	out, err = runOut(ctx, "ip", "-n", peerNS, "-o", "link")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		var i int
		if _, err := fmt.Sscanf(line, "%d:", &i); err == nil && i == idx {
			f := strings.Fields(line)
			return strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0], nil
		}
	}
	return "", fmt.Errorf("veth peer %d of %s in %s not found in %s", idx, ifname, ns, peerNS)
}

// Internet returns the Internet host of that name, or nil.
func (l *Lab) Internet(name string) *Host { return l.internet[name] }

// Site returns the site of that name, or nil.
func (l *Lab) Site(name string) *Site {
	for _, s := range l.sites {
		if s.Spec.Name == name {
			return s
		}
	}
	return nil
}

// Sites returns the lab's sites in spec order.
func (l *Lab) Sites() []*Site { return append([]*Site(nil), l.sites...) }

// Hosts returns every host of the lab (Internet hosts, routers, site
// hosts) in creation order.
func (l *Lab) Hosts() []*Host { return append([]*Host(nil), l.all...) }

// Namespaces returns every namespace the lab made, the Internet's first.
func (l *Lab) Namespaces() []string {
	out := []string{l.inet}
	for _, h := range l.all {
		out = append(out, h.NS)
	}
	return out
}

// RunDir returns the directory that holds the run's PID files and logs.
func (l *Lab) RunDir() string { return l.run.dir }

// Close ends every process the lab started (by PID), stops the delay
// lines, deletes the namespaces and /etc/netns entries and the run
// directory. It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	procs, delays := l.procs, l.delays
	l.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		wg.Add(1)
		go func(p *Proc) { defer wg.Done(); _ = p.Stop(3 * time.Second) }(procs[i])
	}
	wg.Wait()
	for _, d := range delays {
		errs = append(errs, d.Close())
	}
	errs = append(errs, removeRun(l.ID))
	return errors.Join(errs...)
}

// Describe writes a table of the lab's hosts: name, namespace, address,
// and how to enter it.
func (l *Lab) Describe(w io.Writer) {
	fmt.Fprintf(w, "lab %s (run dir %s)\n", l.ID, l.run.dir)
	fmt.Fprintf(w, "  %-14s %-12s %-16s %-16s %s\n", "host", "site kind", "address", "public address", "namespace")
	for _, h := range l.all {
		kind, pub := "internet", h.Addr.String()
		if h.Site != nil {
			kind = string(h.Site.Spec.Kind)
			pub = h.Site.PublicAddr.String()
			if h == h.Site.Outer || (h == h.Site.Router && h.Site.Outer == nil) {
				pub = h.Site.WAN.String() // the router's own Internet address
			}
			if h.Site.Spec.blocksUDP() && h.Site.Spec.Kind != UDPBlocked {
				kind += "+udp-blocked"
			}
		}
		fmt.Fprintf(w, "  %-14s %-12s %-16s %-16s %s\n", h.Name, kind, h.Addr, pub, h.NS)
	}
	fmt.Fprintf(w, "Enter a host:  ip netns exec NAMESPACE bash   (e.g. ip netns exec %s bash)\n", l.all[len(l.all)-1].NS)
}
