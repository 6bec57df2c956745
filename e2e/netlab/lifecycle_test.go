package netlab

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

func smallSpec() Spec {
	return Spec{Internet: []string{"srv1", "srv2"}, Sites: []SiteSpec{
		{Name: "home", Kind: UPnP}, // runs stund and miniupnpd
		{Name: "slow", Kind: Cone, Shape: Shape{Delay: 5 * time.Millisecond}}, // runs a delay line
	}}
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// leftovers lists what of run id still exists.
func leftovers(t *testing.T, id string, pids []int) []string {
	t.Helper()
	var left []string
	nss, err := namespaces(id)
	if err != nil {
		t.Fatal(err)
	}
	left = append(left, nss...)
	etc, _ := filepath.Glob("/etc/netns/pvc" + id + "-*")
	left = append(left, etc...)
	if exists(filepath.Join(RunRoot, id)) {
		left = append(left, filepath.Join(RunRoot, id))
	}
	for _, pid := range pids {
		b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && f[0] != "Z" {
			left = append(left, "pid "+itoa(pid)+" (state "+f[0]+")")
		}
	}
	return left
}

func itoa(i int) string { return string(appendInt(nil, i)) }

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

// TestCloseLeavesNothing: after Close no namespace, /etc/netns entry, run
// directory, process or goroutine of the lab is left.
func TestCloseLeavesNothing(t *testing.T) {
	RequireRoot(t)
	spec := smallSpec()
	RequireTools(t, spec.Tools()...)
	before := runtime.NumGoroutine()
	ctx := context.Background()
	l, err := Build(ctx, spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sleeper, err := l.Site("slow").Hosts[0].Start("sleep", "60")
	if err != nil {
		l.Close()
		t.Fatal(err)
	}
	var pids []int
	for _, p := range l.procs {
		pids = append(pids, p.PID())
	}
	if len(pids) != 3 {
		t.Errorf("got %d processes (want stund, miniupnpd, sleep)", len(pids))
	}
	if n := len(leftovers(t, l.ID, pids)); n < len(l.Namespaces()) {
		t.Fatalf("before Close only %d things exist", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if left := leftovers(t, l.ID, pids); len(left) > 0 {
		t.Errorf("left after Close: %v", left)
	}
	if sleeper.Wait() == nil {
		t.Errorf("sleep 60 exited cleanly; want it ended by a signal")
	}
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines before the lab, %d after Close:\n%s", before, n, buf[:runtime.Stack(buf, true)])
	}
}

// TestSweep: a run whose owner died is removed with its processes; a live
// run and a pvc namespace that no run claims are left alone.
func TestSweep(t *testing.T) {
	RequireRoot(t)
	spec := Spec{Internet: []string{"srv1"}, Sites: []SiteSpec{{Name: "c", Kind: Cone}}}
	ctx := context.Background()
	dead, err := Build(ctx, spec, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	live := New(t, spec)
	orphan, err := dead.Site("c").Hosts[0].Start("sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	stray := "pvc" + "zz" + dead.ID + "-stray" // a pvc namespace of no run
	if err := exec.Command("ip", "netns", "add", stray).Run(); err != nil {
		t.Fatal(err)
	}
	defer exec.Command("ip", "netns", "del", stray).Run()

	// The dead run's owner: a process that has exited.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	owner := filepath.Join(dead.RunDir(), "owner")
	if err := os.WriteFile(owner, []byte(itoa(gone.Process.Pid)+" 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	rep, err := Sweep()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rep.Removed, dead.ID) {
		t.Errorf("sweep removed %v, want it to contain the dead run %s", rep.Removed, dead.ID)
	}
	if slices.Contains(rep.Removed, live.ID) || !slices.Contains(rep.Live, live.ID) {
		t.Errorf("sweep report %+v: the live run %s must be left alone", rep, live.ID)
	}
	if !slices.Contains(rep.Unknown, stray) || !exists("/run/netns/"+stray) {
		t.Errorf("sweep report %+v: the stray namespace %s must be reported and left alone", rep, stray)
	}
	if left := leftovers(t, dead.ID, []int{orphan.PID()}); len(left) > 0 {
		t.Errorf("left after sweeping the dead run: %v", left)
	}
	if nss, _ := namespaces(live.ID); len(nss) != len(live.Namespaces()) {
		t.Errorf("the live run has %d namespaces after the sweep, want %d", len(nss), len(live.Namespaces()))
	}
}

// TestTwoRunsSideBySide: two labs of the same spec built at once get
// different IDs and both work.
func TestTwoRunsSideBySide(t *testing.T) {
	RequireRoot(t)
	spec := Spec{Internet: []string{"srv1", "srv2"}, Sites: []SiteSpec{{Name: "c", Kind: Cone}}}
	labs := make([]*Lab, 2)
	errs := make([]error, 2)
	done := make(chan int)
	for i := range labs {
		go func() {
			labs[i], errs[i] = Build(context.Background(), spec, Options{})
			done <- i
		}()
	}
	<-done
	<-done
	for i, l := range labs {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		defer l.Close()
	}
	if labs[0].ID == labs[1].ID {
		t.Fatalf("both runs got ID %s", labs[0].ID)
	}
	for _, l := range labs {
		p, err := NewProber(l.Internet("srv1"), l.Internet("srv2"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := p.Probe(l.Site("c"))
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		if d := got.Diff(Expected(l.Site("c"))); d != "" {
			t.Errorf("run %s: %s", l.ID, d)
		}
	}
}
