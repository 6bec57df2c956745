package certify

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
)

// slurmPool is a Slurm cluster in the lab: slurmctld on ctl, one slurmd
// per node, one munged serving them all through its socket.
type slurmPool struct {
	dir   string // configuration, spool, logs, munge socket
	conf  string // slurm.conf
	ctl   *netlab.Host
	nodes map[string]*netlab.Host // node name -> host
	names []string
	procs []*netlab.Proc
}

// slurmSpec says where a Slurm pool runs and by which addresses its
// daemons reach each other: the hosts' own (underlay) addresses, or the
// PVC overlay's 240.x addresses of the pvcd running in each host.
type slurmSpec struct {
	Ctl     *netlab.Host            // runs munged, slurmctld and the client commands
	CtlAddr netip.Addr              // SlurmctldHost's address
	Names   []string                // node names, in order
	Nodes   map[string]*netlab.Host // node name -> host
	Addrs   map[string]netip.Addr   // node name -> NodeAddr
	// Binds, by node name, is a file mounted over another in that
	// slurmd's own mount namespace (which its jobs inherit).
	Binds map[string][2]string
}

// underlay returns the spec of a pool that uses the hosts' own addresses.
func underlay(ctl *netlab.Host, names []string, nodes map[string]*netlab.Host, binds map[string][2]string) slurmSpec {
	addrs := map[string]netip.Addr{}
	for _, n := range names {
		addrs[n] = nodes[n].Addr
	}
	return slurmSpec{Ctl: ctl, CtlAddr: ctl.Addr, Names: names, Nodes: nodes, Addrs: addrs, Binds: binds}
}

// slurmConf returns a minimal slurm.conf (LAB.md's pitfalls): linuxproc
// proctrack, no task plugin, no accounting, a spool directory per node.
func slurmConf(dir string, ctlAddr netip.Addr, names []string, addrs map[string]netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, `ClusterName=pvccert
SlurmctldHost=ctl(%s)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=%[2]s/munge/munge.socket
StateSaveLocation=%[2]s/ctld
SlurmdSpoolDir=%[2]s/spool/%%n
SlurmctldPidFile=%[2]s/ctld.pid
SlurmdPidFile=%[2]s/slurmd-%%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
`, ctlAddr, dir)
	for _, n := range names {
		fmt.Fprintf(&b, "NodeName=%s NodeAddr=%s CPUs=1 State=UNKNOWN\n", n, addrs[n])
	}
	fmt.Fprintf(&b, "PartitionName=grid Nodes=%s Default=YES MaxTime=INFINITE State=UP\n", strings.Join(names, ","))
	return b.String()
}

// startSlurm starts munged, slurmctld and the slurmds of spec (each
// node's Binds are mounted in its slurmd's own mount namespace, which its
// jobs inherit), registers them with the lab (ended by PID at the end)
// and waits until every node is idle.
func startSlurm(t *testing.T, dir string, spec slurmSpec) *slurmPool {
	t.Helper()
	ctl, names, nodes := spec.Ctl, spec.Names, spec.Nodes
	p := &slurmPool{dir: dir, ctl: ctl, nodes: nodes, names: names, conf: filepath.Join(dir, "slurm.conf")}
	for _, d := range []string{"munge", "ctld", "spool"} {
		must(t, os.MkdirAll(filepath.Join(dir, d), 0o755))
	}
	must(t, os.Chmod(dir, 0o755))
	key := make([]byte, 1024)
	f, err := os.Open("/dev/urandom")
	must(t, err)
	_, err = f.Read(key)
	f.Close()
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "munge", "key"), key, 0o400))
	must(t, os.WriteFile(p.conf, []byte(slurmConf(dir, spec.CtlAddr, names, spec.Addrs)), 0o644))
	start := func(h *netlab.Host, argv ...string) *netlab.Proc {
		pr, err := h.Start(argv...)
		if err != nil {
			t.Fatal(err)
		}
		p.procs = append(p.procs, pr)
		t.Cleanup(func() { _ = pr.Stop(3 * time.Second) })
		return pr
	}
	m := filepath.Join(dir, "munge")
	munged := start(ctl, "munged", "-F", "--force", "--socket="+m+"/munge.socket", "--key-file="+m+"/key",
		"--pid-file="+m+"/pid", "--seed-file="+m+"/seed", "--log-file="+m+"/log")
	waitFor(t, 5*time.Second, "munged's socket", func() bool {
		_, err := os.Stat(m + "/munge.socket")
		return err == nil
	}, munged)
	// slurmctld refuses to start unless its hostname is SlurmctldHost.
	ctld := start(ctl, "unshare", "--uts", "sh", "-c",
		fmt.Sprintf("hostname ctl && SLURM_CONF=%s exec slurmctld -D -f %s", p.conf, p.conf))
	// slurmd registers once at start: start the nodes when slurmctld answers.
	waitFor(t, 15*time.Second, "slurmctld", func() bool {
		_, err := p.client(context.Background(), "sinfo", "-h")
		return err == nil
	}, ctld)
	// slurmd needs the host's /sys (its cgroup mount), which `ip netns
	// exec` hides: enter this process's mount namespace again, then a
	// private copy of it with the node's hostname.
	for _, n := range names {
		must(t, os.MkdirAll(filepath.Join(dir, "spool", n), 0o755))
		script := fmt.Sprintf("hostname %s && ", n)
		if bm, ok := spec.Binds[n]; ok {
			script += fmt.Sprintf("mount --bind %s %s && ", bm[0], bm[1])
		}
		script += fmt.Sprintf("SLURM_CONF=%s exec slurmd -D -N %s -f %s", p.conf, n, p.conf)
		start(nodes[n], "nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", os.Getpid()), "--",
			"unshare", "--uts", "--mount", "sh", "-c", script)
	}
	waitFor(t, 30*time.Second, "every slurmd idle", func() bool {
		out, err := p.client(context.Background(), "sinfo", "-h", "-N", "-o", "%N %t")
		if err != nil {
			return false
		}
		idle := 0
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[1] == "idle" {
				idle++
			}
		}
		return idle == len(names)
	}, p.procs...)
	return p
}

// client runs a Slurm client command on the controller's host.
func (p *slurmPool) client(ctx context.Context, argv ...string) (string, error) {
	return p.ctl.Run(ctx, append([]string{"env", "SLURM_CONF=" + p.conf}, argv...)...)
}

// stop ends every daemon by its PID and checks that it exited.
func (p *slurmPool) stop(t *testing.T) {
	for i := len(p.procs) - 1; i >= 0; i-- {
		_ = p.procs[i].Stop(3 * time.Second)
		select {
		case <-p.procs[i].Done():
		default:
			t.Errorf("%s (pid %d) still running", p.procs[i].Argv[0], p.procs[i].PID())
		}
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool, procs ...*netlab.Proc) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		for _, pr := range procs {
			select {
			case <-pr.Done():
				t.Fatalf("waiting for %s: %s exited: %s", what, pr.Argv[0], pr.Output())
			default:
			}
		}
		if time.Now().After(deadline) {
			var logs string
			for _, pr := range procs {
				out := pr.Output()
				if len(out) > 3000 {
					out = out[len(out)-3000:]
				}
				logs += fmt.Sprintf("--- %s (pid %d):\n%s\n", strings.Join(pr.Argv, " "), pr.PID(), out)
			}
			t.Fatalf("waiting for %s: not after %v\n%s", what, d, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// buildCertify builds pvc-certify into dir.
func buildCertify(t *testing.T, dir string) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go" // where the machine image ships it (README)
	}
	bin := filepath.Join(dir, "pvc-certify")
	cmd := exec.Command(gobin, "build", "-o", bin, "github.com/pvc-project/pvc/certify/cmd/pvc-certify")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build pvc-certify: %v\n%s", err, out)
	}
	return bin
}
