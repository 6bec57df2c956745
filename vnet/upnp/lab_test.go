package upnp_test

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/vnet/upnp/upnptest"
)

// probeEnv makes the test binary run upnptest.Probe instead of the tests:
// the lab tests start it inside a lab host, where goupnp's own goroutines
// and sockets live in the host's network namespace.
const probeEnv = "PVC_UPNP_PROBE"

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err := upnptest.Probe(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// probe is the Mapper running in a lab host.
type probe struct {
	t *testing.T
	p *netlab.Proc
}

func startProbe(t *testing.T, h *netlab.Host, args ...string) *probe {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.Start(append([]string{"env", probeEnv + "=1", exe}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(3 * time.Second) })
	return &probe{t, p}
}

// await returns the first output line that starts with prefix, waiting up
// to timeout.
func (p *probe) await(prefix string, timeout time.Duration) string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		sc := bufio.NewScanner(strings.NewReader(p.p.Output()))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), prefix) {
				return sc.Text()
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %q line from the probe within %v; output:\n%s", prefix, timeout, p.p.Output())
		}
		select {
		case <-p.p.Done():
			if time.Now().Before(deadline) {
				deadline = time.Now() // one last look at the output
			}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var mappedRE = regexp.MustCompile(`^mapped (\S+) .*discovery=(\S+) setup=(\S+)`)

// mapped waits for the probe's endpoint and returns it with the discovery
// and setup times it reported.
func (p *probe) mapped(timeout time.Duration) (ext netip.AddrPort, discovery, setup string) {
	p.t.Helper()
	m := mappedRE.FindStringSubmatch(p.await("mapped ", timeout))
	ext, err := netip.ParseAddrPort(m[1])
	if err != nil {
		p.t.Fatal(err)
	}
	return ext, m[2], m[3]
}

// upnpList returns miniupnpc's listing of the gateway's mappings.
func upnpList(t *testing.T, h *netlab.Host, rootURL string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out, err := h.Run(ctx, "upnpc", "-i", "-u", rootURL, "-l")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// listed reports whether upnpc's listing has UDP ext->client:in with desc.
func listed(list string, ext uint16, client netip.Addr, in uint16, desc string) bool {
	want := fmt.Sprintf("UDP  %d->%s:%d  '%s'", ext, client, in, desc)
	return strings.Contains(list, want)
}

// reach sends a datagram from h to ext and reports whether echo saw it.
func reach(t *testing.T, from *netlab.Host, ext netip.AddrPort, echo *netlab.Echo) bool {
	t.Helper()
	c, err := netlab.UDPSocket(from, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = netlab.AskUDP(c, ext, 2*time.Second)
	return err == nil && echo.SeenFrom(from.Addr)
}

// outCounters returns the packet counts of the OUTPUT rules that count
// what a host sends to the gateway (SSDP multicast and the HTTP port).
func outCounters(t *testing.T, h *netlab.Host) (ssdp, http int) {
	t.Helper()
	out, err := h.Run(t.Context(), "iptables", "-L", "OUTPUT", "-v", "-n", "-x")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(l, "239.255.255.250"):
			ssdp = n
		case strings.Contains(l, fmt.Sprintf("dpt:%d", netlab.UPnPPort)):
			http = n
		}
	}
	return ssdp, http
}

// TestLab runs the Mapper against the real miniupnpd of a lab upnp site.
func TestLab(t *testing.T) {
	lab := netlab.New(t, netlab.Spec{Internet: []string{"srv1"}, Sites: []netlab.SiteSpec{
		{Name: "home", Kind: netlab.UPnP, Hosts: 1},
		{Name: "cone", Kind: netlab.Cone, Hosts: 1},
	}})
	netlab.RequireTools(t, "upnpc", "iptables", "env")
	home, srv := lab.Site("home"), lab.Internet("srv1")
	h := home.Hosts[0]
	url := home.UPnPRootDesc()
	const port = 7400
	base := []string{"-cluster", "lab", "-peer", "h1", "-root-url", url}

	echo, err := netlab.StartEcho(h, netip.Addr{}, port)
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()

	var p *probe
	lt := t // the probe outlives the subtest
	t.Run("mapped", func(t *testing.T) {
		t0 := time.Now()
		p = startProbe(lt, h, append(base, "-v", "-port", fmt.Sprint(port), "-lease", "4s")...)
		ext, disc, setup := p.mapped(10 * time.Second)
		t.Logf("mapped %v: %v from start (process included); discovery by root URL %s, stale cleanup + mapping + external address %s",
			ext, time.Since(t0).Round(time.Millisecond), disc, setup)
		if want := netip.AddrPortFrom(home.PublicAddr, port); ext != want {
			t.Errorf("endpoint %v, want %v", ext, want)
		}
		if l := upnpList(t, h, url); !listed(l, port, h.Addr, port, "pvc lab h1") {
			t.Errorf("upnpc -l does not list the mapping:\n%s", l)
		}
		if !reach(t, srv, ext, echo) {
			t.Errorf("a datagram from %s to %v did not reach %s:%d", srv.Name, ext, h.Name, port)
		}
	})
	if p == nil || t.Failed() {
		t.FailNow()
	}

	t.Run("refreshed", func(t *testing.T) {
		// Control: miniupnpd does end a 4 s lease that nobody renews.
		if out, err := h.Run(t.Context(), "upnpc", "-i", "-u", url, "-e", "pvc-lab control", "-a", h.Addr.String(), "7403", "7403", "UDP", "4"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		time.Sleep(9 * time.Second) // more than two 4 s leases
		l := upnpList(t, h, url)
		if !listed(l, port, h.Addr, port, "pvc lab h1") {
			t.Errorf("mapping gone after two leases:\n%s\nprobe:\n%s", l, p.p.Output())
		}
		if strings.Contains(l, "pvc-lab control") {
			t.Errorf("the control mapping outlived its 4 s lease: the test proves nothing\n%s", l)
		}
		if n := strings.Count(p.p.Output(), "UPnP mapping renewed"); n < 3 {
			t.Errorf("%d renewals in 9 s with a 4 s lease, want >= 3 (every 2 s)", n)
		} else {
			t.Logf("%d renewals in 9 s; the unrenewed control mapping expired", n)
		}
		if n := strings.Count(p.p.Output(), "mapped "); n != 1 {
			t.Errorf("endpoint reported %d times, want once (renewals keep it)", n)
		}
		if !reach(t, srv, netip.AddrPortFrom(home.PublicAddr, port), echo) {
			t.Error("datagram did not arrive after two leases")
		}
	})

	t.Run("removed", func(t *testing.T) {
		t0 := time.Now()
		t.Logf("SIGTERM at %s", t0.UTC().Format("15:04:05.000"))
		_ = p.p.Stop(5 * time.Second) // SIGTERM
		t.Logf("probe ended %v after SIGTERM", time.Since(t0).Round(time.Millisecond))
		if testing.Verbose() {
			out := strings.Split(strings.TrimSpace(p.p.Output()), "\n")
			t.Logf("probe's last lines:\n%s", strings.Join(out[max(0, len(out)-4):], "\n"))
		}
		p.await("stopped", time.Second)
		if !strings.Contains(p.p.Output(), "UPnP mapping deleted") {
			t.Errorf("no deletion logged:\n%s", p.p.Output())
		}
		if l := upnpList(t, h, url); strings.Contains(l, "pvc lab h1") {
			t.Errorf("mapping still listed after exit:\n%s", l)
		}
	})

	t.Run("stale", func(t *testing.T) {
		// Another peer behind the same router keeps its mapping.
		if out, err := h.Run(t.Context(), "upnpc", "-i", "-u", url, "-e", "pvc lab h2", "-a", h.Addr.String(), "7402", "7402", "UDP", "600"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		crashed := startProbe(t, h, append(base, "-port", "7401", "-lease", "600s")...)
		crashed.mapped(10 * time.Second)
		if err := syscall.Kill(crashed.p.PID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-crashed.p.Done()
		l := upnpList(t, h, url)
		if !listed(l, 7401, h.Addr, 7401, "pvc lab h1") {
			t.Fatalf("the crashed run's mapping is not there:\n%s", l)
		}
		next := startProbe(t, h, append(base, "-port", fmt.Sprint(port), "-lease", "600s")...)
		ext, _, _ := next.mapped(10 * time.Second)
		l = upnpList(t, h, url)
		if listed(l, 7401, h.Addr, 7401, "pvc lab h1") {
			t.Errorf("stale mapping kept:\n%s", l)
		}
		if !listed(l, port, h.Addr, port, "pvc lab h1") || ext.Port() != port {
			t.Errorf("fresh mapping %v missing:\n%s", ext, l)
		}
		if !listed(l, 7402, h.Addr, 7402, "pvc lab h2") {
			t.Errorf("the other peer's mapping was deleted:\n%s", l)
		}
		if !strings.Contains(next.p.Output(), "UPnP stale mapping deleted") {
			t.Errorf("no stale deletion logged:\n%s", next.p.Output())
		}
		_ = next.p.Stop(5 * time.Second)
		_, _ = h.Run(t.Context(), "upnpc", "-i", "-u", url, "-d", "7402", "UDP")
	})

	// Count what h sends to the gateway from here on.
	for _, rule := range [][]string{
		{"-p", "udp", "-d", "239.255.255.250", "--dport", "1900"},
		{"-p", "tcp", "-d", home.LAN.Addr().Next().String(), "--dport", fmt.Sprint(netlab.UPnPPort)},
	} {
		if out, err := h.Run(t.Context(), append([]string{"iptables", "-I", "OUTPUT"}, rule...)...); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}

	t.Run("ssdp", func(t *testing.T) {
		p := startProbe(t, h, "-cluster", "lab", "-peer", "h1", "-port", fmt.Sprint(port), "-lease", "600s")
		ext, disc, setup := p.mapped(10 * time.Second)
		t.Logf("mapped %v by SSDP search: discovery %s, setup %s", ext, disc, setup)
		_ = p.p.Stop(5 * time.Second)
		if ssdp, http := outCounters(t, h); ssdp == 0 || http == 0 {
			t.Errorf("counters do not see the probe: ssdp %d, http %d", ssdp, http)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		if out, err := h.Run(t.Context(), "iptables", "-Z", "OUTPUT"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		p := startProbe(t, h, append(base, "-port", fmt.Sprint(port), "-disable")...)
		line := p.await("disabled", 5*time.Second)
		if err := p.p.Wait(); err != nil {
			t.Errorf("disabled probe: %v\n%s", err, p.p.Output())
		}
		if ssdp, http := outCounters(t, h); ssdp != 0 || http != 0 {
			t.Errorf("a disabled mapper sent packets: ssdp %d, http %d", ssdp, http)
		}
		t.Logf("%s; nothing sent", line)
	})

	t.Run("no-gateway", func(t *testing.T) {
		c := lab.Site("cone").Hosts[0]
		t0 := time.Now()
		p := startProbe(t, c, "-cluster", "lab", "-peer", "c1", "-port", fmt.Sprint(port), "-discover-timeout", "3s", "-retry", "1m")
		line := p.await("failed ", 6*time.Second)
		took := time.Since(t0)
		if !strings.Contains(line, `why="no UPnP gateway found"`) {
			t.Errorf("status %q", line)
		}
		if took > 4*time.Second {
			t.Errorf("no-gateway reported after %v, want within the 3 s timeout (+ start)", took)
		}
		t.Logf("%s (%v after start)", line, took.Round(time.Millisecond))
	})
}
