//go:build linux

package ttcp

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Available reports whether this process can run Traversing-TCP here: it
// needs CAP_NET_ADMIN (NFQUEUE, iptables rules, the TUN device),
// CAP_NET_RAW (the raw socket of the low-TTL opening SYN), /dev/net/tun
// and the iptables program. The error, which wraps ErrUnavailable, names
// everything that is missing, so that the caller can log it and go on with
// the next technique. It checks the calling thread's capabilities.
func Available() error { return available("iptables") }

func available(iptables string) error {
	var missing []string
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		missing = append(missing, "capabilities unreadable: "+err.Error())
	} else {
		for _, c := range []struct {
			bit  uint
			name string
		}{{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"}, {unix.CAP_NET_RAW, "CAP_NET_RAW"}} {
			if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
				missing = append(missing, c.name)
			}
		}
	}
	if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		missing = append(missing, "/dev/net/tun ("+err.Error()+")")
	} else {
		f.Close()
	}
	if _, err := exec.LookPath(iptables + "-restore"); err != nil {
		missing = append(missing, "the "+iptables+"-restore program")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: missing %s", ErrUnavailable, strings.Join(missing, ", "))
	}
	return nil
}

// rule is one iptables rule that this package adds and later deletes.
type rule struct {
	table, chain string
	spec         []string
}

func (r rule) String() string {
	return fmt.Sprintf("-t %s %s %s", r.table, r.chain, strings.Join(r.spec, " "))
}

// restore applies rules with one run of PROG-restore --noflush, inserting
// (op "-I") or deleting (op "-D") them, all or none. It runs in the calling
// thread's network namespace (the child inherits it).
func restore(prog, op string, rs []rule) error {
	if len(rs) == 0 {
		return nil
	}
	var b strings.Builder
	for i := 0; i < len(rs); {
		t := rs[i].table
		fmt.Fprintf(&b, "*%s\n", t)
		for ; i < len(rs) && rs[i].table == t; i++ {
			b.WriteString(op + " " + rs[i].chain)
			for _, a := range rs[i].spec {
				if strings.ContainsAny(a, " \t") {
					a = `"` + a + `"`
				}
				b.WriteString(" " + a)
			}
			b.WriteString("\n")
		}
		b.WriteString("COMMIT\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog+"-restore", "-w", "5", "--noflush")
	cmd.Stdin = strings.NewReader(b.String())
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s-restore %s: %w: %s (input: %q)", prog, op, err, strings.TrimSpace(string(out)), b.String())
	}
	return nil
}

// addRules inserts rules, all or none.
func addRules(prog string, rs []rule) error { return restore(prog, "-I", rs) }

// delRules deletes rules, in reverse order.
func delRules(prog string, rs []rule) error {
	rev := make([]rule, len(rs))
	for i, r := range rs {
		rev[len(rs)-1-i] = r
	}
	return restore(prog, "-D", rev)
}

// threadNS opens the calling thread's network namespace, so that later
// clean-ups can return to it from any goroutine.
func threadNS() (*os.File, error) {
	return os.Open("/proc/thread-self/ns/net")
}

// inNS runs fn on a fresh OS thread inside the namespace ns; the thread is
// discarded afterwards.
func inNS(ns *os.File, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// staleTables are the tables a Dialer or a Server puts rules in.
var staleTables = []string{"raw", "mangle", "filter"}

// RemoveStale deletes, in the calling thread's network namespace, every
// iptables rule that a Dialer or Server left behind (their comments start
// with "pvc-ttcp"), as a process killed with SIGKILL does. Call it once at
// start, before NewServer, where no other Dialer or Server of this
// namespace is running. It returns how many rules it deleted.
func RemoveStale(iptables string) (int, error) {
	if iptables == "" {
		iptables = "iptables"
	}
	var in strings.Builder
	n := 0
	for _, t := range staleTables {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, iptables+"-save", "-t", t).Output()
		cancel()
		if err != nil {
			return 0, fmt.Errorf("%s-save -t %s: %w", iptables, t, err)
		}
		var dels []string
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, "-A ") && strings.Contains(line, `--comment "pvc-ttcp`) {
				dels = append(dels, "-D "+strings.TrimPrefix(line, "-A "))
			}
		}
		if len(dels) > 0 {
			fmt.Fprintf(&in, "*%s\n%s\nCOMMIT\n", t, strings.Join(dels, "\n"))
			n += len(dels)
		}
	}
	if n == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, iptables+"-restore", "-w", "5", "--noflush")
	cmd.Stdin = strings.NewReader(in.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%s-restore: %w: %s", iptables, err, strings.TrimSpace(string(out)))
	}
	return n, nil
}
