package dataplane

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
	"github.com/pvc-project/pvc/security/bundle"
	"github.com/pvc-project/pvc/security/keys"
	"github.com/pvc-project/pvc/security/master"
)

// buildBinaries builds pvcd, pvc-broker and the stock wireguard-go (the
// main package of the module's own golang.zx2c4.com/wireguard) into dir.
func buildBinaries(dir string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	for pkg, out := range map[string]string{
		"github.com/pvc-project/pvc/pvcd":   "pvcd",
		"github.com/pvc-project/pvc/broker": "pvc-broker",
		"golang.zx2c4.com/wireguard":        "wireguard-go",
	} {
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, out), pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", pkg, err, b)
		}
	}
	return nil
}

// firstConnect opens a TCP connection from one host to dst:port on
// another and exchanges one byte each way. It returns the time until the
// connection was established and until the first answer arrived.
func firstConnect(from, to *netlab.Host, dst netip.Addr, port uint16) (connect, answer time.Duration, err error) {
	var ln net.Listener
	if err := to.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(dst, port).String())
		return err
	}); err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		if _, err := c.Read(b); err == nil {
			_, _ = c.Write(b)
		}
	}()
	err = from.Do(func() error {
		t0 := time.Now()
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		connect = time.Since(t0)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		b := []byte{1}
		if _, err := c.Write(b); err != nil {
			return err
		}
		if _, err := c.Read(b); err != nil {
			return err
		}
		answer = time.Since(t0)
		return nil
	})
	return connect, answer, err
}

// addFakePeers certifies n more peers (fresh keys, hosts that never run)
// with the cluster's master key and publishes their certificates through
// the brokers, so that every pvcd of the cluster knows them. It returns
// when the publishing client is done.
func addFakePeers(ctx context.Context, c *vcluster.Cluster, via *netlab.Host, n int) error {
	m, err := master.Open(c.MasterKey())
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(filepath.Join(c.Dir, c.Name+bundle.FileExt))
	if err != nil {
		return err
	}
	b, err := bundle.Decode(raw)
	if err != nil {
		return err
	}
	var certs [][]byte
	var firstKey ed25519.PrivateKey
	for i := range n {
		wg, err := keys.NewWG()
		if err != nil {
			return err
		}
		sk, err := keys.NewSigning()
		if err != nil {
			return err
		}
		crt, err := m.Issue(master.CertOptions{Name: fmt.Sprintf("idle%02d", i), WGKey: wg.Public(), SignKey: sk.Public().(ed25519.PublicKey)})
		if err != nil {
			return err
		}
		certs = append(certs, crt.Encode())
		if i == 0 {
			firstKey = sk
		}
	}
	// One session, as the first of them, publishes all the certificates
	// (they are the master's signed objects: any member may carry them).
	// The client runs in this process, outside the lab: it reaches the
	// broker through a forwarder whose far side dials from a lab host.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	br := b.Brokers[0]
	local, err := forward(ctx, via, br.Addr)
	if err != nil {
		return err
	}
	br.Addr = local
	cl, err := client.New(client.Config{Bundle: b, Cert: certs[0], Key: firstKey, Brokers: []bundle.Broker{br}})
	if err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = cl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := cl.WaitConnected(ctx, 1); err != nil {
		return fmt.Errorf("fake peers' broker session: %w", err)
	}
	for _, raw := range certs {
		if err := cl.Publish(ctx, raw); err != nil {
			return fmt.Errorf("publish a fake peer: %w", err)
		}
	}
	return nil
}

// forward listens on 127.0.0.1 in this process's namespace and joins each
// connection to addr, dialled from inside h, until ctx ends.
func forward(ctx context.Context, h *netlab.Host, addr string) (string, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var far net.Conn
			if err := h.Do(func() error {
				var err error
				far, err = net.DialTimeout("tcp4", addr, 5*time.Second)
				return err
			}); err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(far, c); far.Close() }()
			go func() { _, _ = io.Copy(c, far); c.Close() }()
		}
	}()
	return ln.Addr().String(), nil
}

// rss returns a process's resident set size and its peak, in MiB.
func rss(pid int) (cur, peak float64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			cur = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return cur, peak, nil
}

// waitKnown waits until the node's pvcd knows at least n peers.
func waitKnown(ctx context.Context, node *vcluster.Node, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		ps, err := node.Peers(ctx)
		if err != nil {
			return err
		}
		if len(ps) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s knows %d peers after %v, want %d", node.Name, len(ps), within, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
