package traversal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
	"github.com/pvc-project/pvc/vnet/tcppunch"
	"github.com/pvc-project/pvc/vnet/ttcp"
)

// kinds are the site kinds of LAB.md, in the order of the matrix.
var kinds = []netlab.Kind{netlab.Public, netlab.HostFW, netlab.Firewall, netlab.Cone, netlab.Symmetric, netlab.UDPBlocked, netlab.UPnP, netlab.DoubleNAT}

// expected is the path the initiator (row) has to the target (column) once
// traffic has flowed, as `pvcd peers` names it on the initiator. It says
// whose address answers: "direct" is the target's own address (a public
// host, or a firewall both sides punched; over TCP when one side blocks
// UDP), "punched" a hole ICE punched in the target's NAT, "upnp" the
// target's mapped port, "ttcp" Traversing-TCP (tried before TCP
// simultaneous open, and it crosses every port-keeping kind as client and
// as server: see docs/traversal.md). "relay" only where no technique can
// work: a symmetric NAT (a new public port per destination) against
// anything that filters by port, and against a site that blocks UDP.
var expected = map[netlab.Kind]map[netlab.Kind]string{
	//                 public    hostfw    firewall  cone       symmetric  udp-blocked upnp    double-nat
	netlab.Public:     row("direct", "direct", "direct", "punched", "punched", "direct", "upnp", "punched"),
	netlab.HostFW:     row("direct", "direct", "direct", "punched", "relay", "ttcp", "upnp", "punched"),
	netlab.Firewall:   row("direct", "direct", "direct", "punched", "relay", "ttcp", "upnp", "punched"),
	netlab.Cone:       row("direct", "direct", "direct", "punched", "relay", "ttcp", "upnp", "punched"),
	netlab.Symmetric:  row("direct", "relay", "relay", "relay", "relay", "relay", "upnp", "relay"),
	netlab.UDPBlocked: row("direct", "ttcp", "ttcp", "ttcp", "relay", "ttcp", "ttcp", "ttcp"),
	netlab.UPnP:       row("direct", "direct", "direct", "punched", "punched", "ttcp", "upnp", "punched"),
	netlab.DoubleNAT:  row("direct", "direct", "direct", "punched", "relay", "ttcp", "upnp", "punched"),
}

// matches reports whether a pair's path is the expected one. Where
// Traversing-TCP is expected, TCP simultaneous open (the next technique,
// tried when a Traversing-TCP dial fails, e.g. on a loaded machine) is a
// path of the same quality and counts too; the grid marks it with "~".
func matches(path, want string) bool {
	return path == want || (want == "ttcp" && path == "tcp-punch")
}

func row(paths ...string) map[netlab.Kind]string {
	m := map[netlab.Kind]string{}
	for i, p := range paths {
		m[kinds[i]] = p
	}
	return m
}

type pair struct {
	from, to     *vcluster.Node
	kFrom, kTo   netlab.Kind
	first, again error   // the transfers before and after the paths settled
	mbit         float64 // of the second transfer
	path, why    string
}

// TestNATMatrix runs a cluster with two sites of every kind (one host
// each) and, for every ordered pair of kinds (row, column), sends a
// checksummed TCP transfer from the first site of the row's kind to the
// second site of the column's kind over the overlay, lets the paths
// settle, sends again, and compares the initiator's path with the
// expected table. Each pair is a pair of hosts that never talked before.
func TestNATMatrix(t *testing.T) {
	spec := netlab.Spec{Internet: []string{"b1"}, Sites: []netlab.SiteSpec{{Name: "mast", Kind: netlab.Public}}}
	for _, k := range kinds {
		for i := 1; i <= 2; i++ {
			spec.Sites = append(spec.Sites, netlab.SiteSpec{Name: fmt.Sprintf("%s%d", short(k), i), Kind: k})
		}
	}
	l := netlab.New(t, spec)
	c := vcluster.NewT(t, l, "lab", bin)
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Init(); err != nil {
		t.Fatal(err)
	}
	tok, err := c.Token(2 * len(kinds))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Up(l.Site("mast").Hosts[0], "master", "--master-key", c.MasterKey()); err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*vcluster.Node{}
	for _, k := range kinds {
		for i := 1; i <= 2; i++ {
			name := fmt.Sprintf("%s%d", short(k), i)
			n, err := c.Up(l.Site(name).Hosts[0], name, "--join", tok)
			if err != nil {
				t.Fatal(err)
			}
			nodes[name] = n
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitPeers(ctx, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d pvcd up, every peer knows every other after %v", len(nodes)+1, time.Since(start).Round(time.Millisecond))

	var pairs []*pair
	for _, a := range kinds {
		for _, b := range kinds {
			pairs = append(pairs, &pair{from: nodes[short(a)+"1"], to: nodes[short(b)+"2"], kFrom: a, kTo: b})
		}
	}
	const size = 1 << 20
	transferAll := func(set func(p *pair, mbit float64, err error)) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for _, p := range pairs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				mbit, err := netlab.Transfer(p.from.Host, p.to.Host, p.to.Status.VirtualIP, 0, size)
				set(p, mbit, err)
			}()
		}
		wg.Wait()
	}
	start = time.Now()
	transferAll(func(p *pair, _ float64, err error) { p.first = err })
	t.Logf("first transfers (1 MiB each, 8 at a time) of all %d pairs done in %v", len(pairs), time.Since(start).Round(time.Millisecond))

	// Let the paths settle: until every pair has its expected path, or 60 s
	// (a loaded CI machine; it takes about 10 s on an idle one).
	deadline := time.Now().Add(60 * time.Second)
	for {
		settled := true
		for _, p := range pairs {
			pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
			peer, err := p.from.Peer(pctx, p.to.Name)
			pcancel()
			if err != nil {
				p.path, p.why = "error", err.Error()
			} else {
				p.path, p.why = peer.Path, peer.Why
			}
			settled = settled && matches(p.path, expected[p.kFrom][p.kTo])
		}
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("paths settled (or gave up) %v after the first transfers", time.Since(start).Round(time.Millisecond))
	transferAll(func(p *pair, mbit float64, err error) { p.again, p.mbit = err, mbit })

	// The grid, as the initiator sees it.
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nNAT matrix: path from row (initiator) to column (target), as `pvcd peers` shows it on the initiator\n")
	fmt.Fprintf(&sb, "%-12s", "")
	for _, b := range kinds {
		fmt.Fprintf(&sb, "%-12s", b)
	}
	sb.WriteString("\n")
	ok, bad := 0, 0
	var problems []string
	for i, a := range kinds {
		fmt.Fprintf(&sb, "%-12s", a)
		for j, b := range kinds {
			p := pairs[i*len(kinds)+j]
			cell := p.path
			if p.path != expected[a][b] && matches(p.path, expected[a][b]) {
				cell += "~" // the equivalent technique: see matches
			} else if !matches(p.path, expected[a][b]) {
				cell += "≠" + expected[a][b]
				problems = append(problems, fmt.Sprintf("%s → %s: path %s, expected %s (why: %s)", a, b, p.path, expected[a][b], p.why))
			}
			if p.first != nil || p.again != nil {
				cell += "!"
				problems = append(problems, fmt.Sprintf("%s → %s: transfer failed: %v / %v", a, b, p.first, p.again))
				bad++
			} else {
				ok++
			}
			fmt.Fprintf(&sb, "%-12s", cell)
		}
		sb.WriteString("\n")
	}
	fmt.Fprintf(&sb, "transfers with checksum: %d of %d pairs succeeded both times\n", ok, len(pairs))
	t.Log(sb.String())
	// A daemon whose control socket stopped answering: its goroutines.
	for _, p := range pairs {
		if p.path == "error" && p.from.Proc != nil {
			select {
			case <-p.from.Proc.Done():
			default:
				_ = syscall.Kill(p.from.Proc.PID(), syscall.SIGQUIT)
				<-p.from.Proc.Done()
			}
			out := p.from.Proc.Output()
			dump := filepath.Join(os.TempDir(), "pvc-matrix-"+p.from.Name+".log")
			_ = os.WriteFile(dump, []byte(out), 0o644)
			if len(out) > 20000 {
				out = out[len(out)-20000:]
			}
			t.Errorf("pvcd %s does not answer; its whole output is in %s, it ends with:\n%s", p.from.Name, dump, out)
			break
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
}

func short(k netlab.Kind) string {
	switch k {
	case netlab.UDPBlocked:
		return "udpb"
	case netlab.DoubleNAT:
		return "dnat"
	case netlab.Symmetric:
		return "sym"
	case netlab.Firewall:
		return "fw"
	}
	return string(k)
}

// TestExpectedTableAgreesWithCrossings checks the expected table against
// the crossing tables of the TCP techniques (measured on their own, see
// docs/traversal.md): a "ttcp" cell needs Traversing-TCP to cross with one
// of the two as server; a pair with a UDP-blocked site is "relay" only
// where neither Traversing-TCP nor TCP simultaneous open crosses.
func TestExpectedTableAgreesWithCrossings(t *testing.T) {
	for _, a := range kinds {
		for _, b := range kinds {
			want := expected[a][b]
			ttcpOK := ttcp.Crosses(string(b), string(a), true) || ttcp.Crosses(string(a), string(b), true)
			punchOK := tcppunch.Crosses(string(a), string(b), false)
			switch {
			case want == "ttcp" && !ttcpOK:
				t.Errorf("%s → %s expects ttcp, which ttcp.Crosses says cannot work", a, b)
			case want == "relay" && (a == netlab.UDPBlocked || b == netlab.UDPBlocked) && (ttcpOK || punchOK):
				t.Errorf("%s → %s expects relay, but a TCP technique crosses (ttcp %v, tcp-punch %v)", a, b, ttcpOK, punchOK)
			}
		}
	}
}
