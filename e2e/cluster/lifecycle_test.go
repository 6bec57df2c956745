package cluster

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/pvcd/control"
)

// TestRevokeAndCrash: `pvcd revoke` on the master's host cuts the revoked
// peer off from the others within 5 s (the running master publishes the
// new list, every peer's view drops the certificate and the overlay the
// peer). Then a pvcd killed with SIGKILL leaves no TUN device, and its
// restart (no token needed: the certificate is kept) replaces the stale
// hosts block and control socket; `pvcd down` then leaves nothing.
func TestRevokeAndCrash(t *testing.T) {
	netlab.RequireTools(t, "ping")
	c, _, cone, fw := startThree(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reach := func() bool {
		_, err := cone.Host.Run(ctx, "ping", "-n", "-c", "1", "-W", "1", fw.Status.VirtualIP.String())
		return err == nil
	}
	if !reach() {
		t.Fatal("cone1 cannot reach fw1 before the revocation")
	}

	// Revoke fw1 while everything runs.
	start := time.Now()
	if _, err := c.Pvcd("revoke", "--master-key", c.MasterKey(), "fw1"); err != nil {
		t.Fatal(err)
	}
	var cut time.Duration
	for time.Since(start) < 15*time.Second {
		if _, err := cone.Peer(ctx, "fw1"); err != nil && !reach() {
			cut = time.Since(start)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if cut == 0 || cut > 5*time.Second {
		t.Fatalf("fw1 still reachable from cone1 %v after pvcd revoke (want cut off within 5 s)", time.Since(start).Round(time.Millisecond))
	}
	t.Logf("revoked fw1 cut off from cone1 %v after pvcd revoke", cut.Round(time.Millisecond))

	// kill -9 cone1's pvcd.
	if err := syscall.Kill(cone.Proc.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-cone.Proc.Done()
	if out, _ := cone.Host.Run(ctx, "ip", "link", "show", "pvc0"); !strings.Contains(out, "does not exist") {
		t.Errorf("pvc0 left after kill -9: %s", out)
	}
	if b, _ := os.ReadFile(cone.Hosts); !strings.Contains(string(b), "BEGIN pvc lab") {
		t.Errorf("expected the killed pvcd's stale hosts block (the restart must replace it): %q", b)
	}
	// Traversing-TCP's firewall rules outlive a kill -9; the restart
	// removes them before it adds its own (and pvcd down removes those).
	ttcpRules := func() int {
		out, err := cone.Host.Run(ctx, "iptables-save")
		if err != nil {
			t.Fatalf("iptables-save: %v\n%s", err, out)
		}
		return strings.Count(out, `--comment "pvc-ttcp injected SYN"`)
	}
	if n := ttcpRules(); n != 1 {
		t.Errorf("after kill -9: %d Traversing-TCP rules for injected SYNs, want the killed pvcd's 1", n)
	}
	// Restart: no token, the saved certificate is used; a narrower MTU
	// (a PPPoE uplink) is the TUN device's.
	again, err := c.Up(cone.Host, "cone1", "--mtu", "1412")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := again.Host.Run(ctx, "ip", "link", "show", "pvc0"); err != nil || !strings.Contains(out, " mtu 1412 ") {
		t.Errorf("pvc0 after a restart with --mtu 1412: %v\n%s", err, out)
	}
	if again.Status.MTU != 1412 {
		t.Errorf("pvcd status after a restart with --mtu 1412: MTU %d", again.Status.MTU)
	}
	if again.Status.VirtualIP != cone.Status.VirtualIP {
		t.Errorf("restart changed the address: %v -> %v", cone.Status.VirtualIP, again.Status.VirtualIP)
	}
	// The restarted pvcd writes its block once it knows the names.
	var hosts []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if hosts, _ = os.ReadFile(again.Hosts); strings.Count(string(hosts), "BEGIN pvc lab") == 1 {
			break
		}
	}
	if strings.Count(string(hosts), "BEGIN pvc lab") != 1 {
		t.Errorf("hosts file after restart has %d blocks:\n%s", strings.Count(string(hosts), "BEGIN pvc lab"), hosts)
	}
	if _, err := again.Peer(ctx, "master"); err != nil {
		deadline := time.Now().Add(10 * time.Second)
		for err != nil && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			_, err = again.Peer(ctx, "master")
		}
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
	}
	if _, err := again.Peer(ctx, "fw1"); err == nil {
		t.Error("the restarted cone1 lists the revoked fw1")
	}
	if n := ttcpRules(); n != 1 {
		t.Errorf("after the restart: %d Traversing-TCP rules for injected SYNs, want 1", n)
	}
	if err := control.NewClient(again.State).Down(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-again.Proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("pvcd did not exit after pvcd down")
	}
	b, _ := os.ReadFile(again.Hosts)
	if strings.Contains(string(b), "pvc lab") || strings.Contains(string(b), ".lab.pvc") {
		t.Errorf("hosts file after pvcd down:\n%s", b)
	}
	if out, _ := again.Host.Run(ctx, "ip", "link", "show", "pvc0"); !strings.Contains(out, "does not exist") {
		t.Errorf("pvc0 left after pvcd down: %s", out)
	}
	if out, _ := again.Host.Run(ctx, "iptables-save"); strings.Contains(out, "pvc-ttcp") {
		t.Errorf("Traversing-TCP rules left after pvcd down:\n%s", out)
	}
}
