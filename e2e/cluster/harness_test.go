// Package cluster tests PVC end to end with the real binaries in the
// network lab: pvc-broker on the Internet, the master's pvcd and enrolled
// peers behind real NATs and firewalls.
package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/pvcd/control"
)

var bin string // directory of the freshly built binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pvc-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	for _, p := range []string{"pvcd", "broker"} {
		out := filepath.Join(dir, map[string]string{"pvcd": "pvcd", "broker": "pvc-broker"}[p])
		cmd := exec.Command(goTool, "build", "-o", out, "github.com/pvc-project/pvc/"+p)
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", p, err, b)
			os.Exit(1)
		}
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is a pvcd running in a lab host.
type node struct {
	name  string
	host  *netlab.Host
	state string
	hosts string // its hosts file
	proc  *netlab.Proc
	st    control.Status
}

// cluster is a running virtual cluster in a lab.
type cluster struct {
	t      *testing.T
	lab    *netlab.Lab
	dir    string // master key, bundle
	broker string // HOST:PORT=KEY
	nodes  map[string]*node
}

// pvcd runs the pvcd binary on the machine (file-only verbs) and returns
// its standard output.
func (c *cluster) pvcd(args ...string) string {
	c.t.Helper()
	cmd := exec.Command(filepath.Join(bin, "pvcd"), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("pvcd %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// startBroker runs pvc-broker on an Internet host and reads its identity.
func (c *cluster) startBroker(h *netlab.Host) {
	c.t.Helper()
	state := filepath.Join(c.dir, "broker-"+h.Name)
	addr := h.Addr.String() + ":7000"
	p, err := h.Start(filepath.Join(bin, "pvc-broker"), "--listen", addr, "--state", state)
	if err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(p.Output()))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), addr+"=") {
				c.broker = strings.TrimSpace(sc.Text())
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("broker printed no identity:\n%s", p.Output())
}

// up starts pvcd in a lab host and waits until its control socket answers.
func (c *cluster) up(h *netlab.Host, name string, extra ...string) *node {
	c.t.Helper()
	n := &node{name: name, host: h, state: filepath.Join(c.dir, "state-"+name), hosts: filepath.Join(c.dir, "hosts-"+name)}
	if err := os.WriteFile(n.hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		c.t.Fatal(err)
	}
	args := append([]string{filepath.Join(bin, "pvcd"), "up", "--cluster", "lab", "--bundle", filepath.Join(c.dir, "lab.cluster"),
		"--name", name, "--state-dir", n.state, "--hosts-file", n.hosts}, extra...)
	p, err := h.Start(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	n.proc = p
	cl := control.NewClient(n.state)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cl.Status(ctx)
		cancel()
		if err == nil {
			n.st = st
			break
		}
		select {
		case <-p.Done():
			c.t.Fatalf("pvcd %s exited: %v\n%s", name, p.Wait(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("pvcd %s not up after 60 s:\n%s", name, p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.nodes[name] = n
	// Names resolve through this host's own pvcd.
	if err := h.WriteEtc("resolv.conf", []byte("nameserver "+n.st.VirtualIP.String()+"\noptions timeout:1 attempts:2\n")); err != nil {
		c.t.Fatal(err)
	}
	return n
}

func (n *node) peers(t *testing.T) []control.Peer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p, err := control.NewClient(n.state).Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitPeers waits until n knows every other node of the cluster.
func (c *cluster) waitPeers(n *node, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		known := map[string]bool{}
		for _, p := range n.peers(c.t) {
			known[p.Name] = true
		}
		missing := []string{}
		for name := range c.nodes {
			if name != n.name && !known[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s does not know %v after %v:\n%s", n.name, missing, within, n.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func jsonOf(v any) string { b, _ := json.Marshal(v); return string(b) }
