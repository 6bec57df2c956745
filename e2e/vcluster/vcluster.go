// Package vcluster runs a PVC virtual cluster in the network lab with the
// real binaries: pvc-broker on Internet hosts, pvcd on site hosts (the
// master's and hosts enrolled with a token through the brokers). The
// end-to-end tests and `pvc-lab demo` use it.
package vcluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/pvcd/control"
)

// Cluster is a virtual cluster being run in a lab.
type Cluster struct {
	Name        string // cluster name
	Lab         *netlab.Lab
	Bin         string   // directory holding pvcd and pvc-broker
	Dir         string   // master key, bundle, state dirs, hosts files
	Brokers     []string // HOST:PORT=KEY of the running brokers
	Nodes       map[string]*Node
	brokerProcs []*netlab.Proc
	// Wrap, by node name, is a command that pvcd runs under (e.g.
	// setpriv dropping a capability); nil: none.
	Wrap map[string][]string
	// InitFlags are more flags for `pvcd cluster init` (e.g. --subnet).
	InitFlags []string
}

// Node is a pvcd running in a lab host.
type Node struct {
	Name   string
	Host   *netlab.Host
	State  string // state dir
	Hosts  string // its hosts file
	Proc   *netlab.Proc
	Status control.Status // as reported when it came up
}

// New prepares a cluster named name in lab, with binaries from bin and
// files under dir.
func New(lab *netlab.Lab, name, bin, dir string) *Cluster {
	return &Cluster{Name: name, Lab: lab, Bin: bin, Dir: dir, Nodes: map[string]*Node{}}
}

// Pvcd runs a file-only pvcd verb on the machine and returns its stdout.
func (c *Cluster) Pvcd(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.Bin, "pvcd"), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("pvcd %s: %w: %s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out), nil
}

// StartBroker runs pvc-broker on an Internet host, port 7000, and records
// its identity.
func (c *Cluster) StartBroker(h *netlab.Host) error {
	addr := h.Addr.String() + ":7000"
	p, err := h.Start(filepath.Join(c.Bin, "pvc-broker"), "--listen", addr, "--state", filepath.Join(c.Dir, "broker-"+h.Name))
	if err != nil {
		return err
	}
	c.brokerProcs = append(c.brokerProcs, p)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(p.Output()))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), addr+"=") {
				c.Brokers = append(c.Brokers, strings.TrimSpace(sc.Text()))
				return nil
			}
		}
		select {
		case <-p.Done():
			return fmt.Errorf("pvc-broker on %s exited: %v\n%s", h.Name, p.Wait(), p.Output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("pvc-broker on %s printed no identity:\n%s", h.Name, p.Output())
}

// Init makes the cluster's master key and bundle with the running brokers.
func (c *Cluster) Init() error {
	args := []string{"cluster", "init", c.Name, "--out", c.Dir}
	for _, b := range c.Brokers {
		args = append(args, "--broker", b)
	}
	args = append(args, c.InitFlags...)
	_, err := c.Pvcd(args...)
	return err
}

// MasterKey returns the master key file's path.
func (c *Cluster) MasterKey() string { return filepath.Join(c.Dir, c.Name+".key") }

// Token makes an enrollment token for uses hosts.
func (c *Cluster) Token(uses int) (string, error) {
	out, err := c.Pvcd("token", "--master-key", c.MasterKey(), "--uses", fmt.Sprint(uses), "--ttl", "1h")
	return strings.TrimSpace(out), err
}

// Up starts pvcd in a lab host as peer name and waits until its control
// socket answers; extra flags follow (--master-key, --join TOKEN). The
// host's resolv.conf then points at its own pvcd.
func (c *Cluster) Up(h *netlab.Host, name string, extra ...string) (*Node, error) {
	n := &Node{Name: name, Host: h, State: filepath.Join(c.Dir, "state-"+name), Hosts: filepath.Join(c.Dir, "hosts-"+name)}
	// A new node gets a hosts file of its own; a restarted one keeps its
	// file as the killed pvcd left it (the restart must clean it).
	if _, err := os.Stat(n.Hosts); os.IsNotExist(err) {
		if err := os.WriteFile(n.Hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
			return nil, err
		}
	}
	args := append([]string{filepath.Join(c.Bin, "pvcd"), "up", "--cluster", c.Name, "--bundle", filepath.Join(c.Dir, c.Name+".cluster"),
		"--name", name, "--state-dir", n.State, "--hosts-file", n.Hosts}, extra...)
	args = append(append([]string(nil), c.Wrap[name]...), args...)
	p, err := h.Start(args...)
	if err != nil {
		return nil, err
	}
	n.Proc = p
	cl := control.NewClient(n.State)
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := cl.Status(ctx)
		cancel()
		if err == nil {
			n.Status = st
			break
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("pvcd %s exited: %v\n%s", name, p.Wait(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("pvcd %s not up after 90 s:\n%s", name, p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.Nodes[name] = n
	resolv := "nameserver " + n.Status.VirtualIP.String() + "\noptions timeout:1 attempts:2\n"
	return n, h.WriteEtc("resolv.conf", []byte(resolv))
}

// Peers asks a node's pvcd for its peers.
func (n *Node) Peers(ctx context.Context) ([]control.Peer, error) {
	return control.NewClient(n.State).Peers(ctx)
}

// Peer returns the named peer as n sees it.
func (n *Node) Peer(ctx context.Context, name string) (control.Peer, error) {
	ps, err := n.Peers(ctx)
	if err != nil {
		return control.Peer{}, err
	}
	for _, p := range ps {
		if p.Name == name {
			return p, nil
		}
	}
	return control.Peer{}, fmt.Errorf("%s does not list %s", n.Name, name)
}

// ErrTimeout is wrapped when a wait ends unfulfilled.
var ErrTimeout = errors.New("timed out")

// WaitPeers waits until every node knows every other.
func (c *Cluster) WaitPeers(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var missing []string
		for _, n := range c.Nodes {
			ps, err := n.Peers(ctx)
			if err != nil {
				return err
			}
			known := map[string]bool{}
			for _, p := range ps {
				known[p.Name] = true
			}
			for name := range c.Nodes {
				if name != n.Name && !known[name] {
					missing = append(missing, n.Name+" lacks "+name)
				}
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %v: %s", ErrTimeout, within, strings.Join(missing, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
