package broker

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pvc-project/pvc/broker/client"
	"github.com/pvc-project/pvc/security/bundle"
)

// The join storm's peers run in a child process (this test binary again,
// with helperEnv set), so that the two peers that measure the signalling
// round trip do not share a Go scheduler with the 1,000 others: on real
// hosts they would not.
const helperEnv = "PVC_BENCH_STORM_HELPER"

// stormSpec is what the helper is given (a JSON file).
type stormSpec struct {
	Bundle []byte
	Peers  []struct{ Cert, Key []byte }
}

// runStormHelper is the child: it makes the clients, prints "ready", waits
// for "go" on stdin, starts them all at once (one shared verification
// cache), prints "done MS" for each view that holds want certificates and
// "all MS" at the end, and keeps the sessions until stdin closes.
func runStormHelper(specFile string, want int, profile string) error {
	raw, err := os.ReadFile(specFile)
	if err != nil {
		return err
	}
	var spec stormSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return err
	}
	b, err := bundle.Decode(spec.Bundle)
	if err != nil {
		return err
	}
	cache := client.NewVerifyCache(0)
	cs := make([]*client.Client, len(spec.Peers))
	for i, p := range spec.Peers {
		if cs[i], err = client.New(client.Config{Bundle: b, Cert: p.Cert, Key: ed25519.PrivateKey(p.Key),
			Retry: 100 * time.Millisecond, VerifyCache: cache}); err != nil {
			return err
		}
	}
	out := bufio.NewWriter(os.Stdout)
	var omu sync.Mutex
	say := func(format string, args ...any) {
		omu.Lock()
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
		omu.Unlock()
	}
	in := bufio.NewReader(os.Stdin)
	say("ready")
	if line, err := in.ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
		return fmt.Errorf("helper: got %q (%v), want go", line, err)
	}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var run, wait sync.WaitGroup
	start := time.Now()
	for _, c := range cs {
		run.Add(1)
		go func() { defer run.Done(); c.Run(ctx) }()
		wait.Add(1)
		go func() {
			defer wait.Done()
			if c.View().Wait(ctx, func(v *client.View) bool { return v.Len() >= want }) == nil {
				say("done %d", time.Since(start).Microseconds())
			}
		}()
	}
	waited := make(chan struct{})
	go func() { wait.Wait(); close(waited) }()
	select {
	case <-waited:
		pprof.StopCPUProfile()
		say("all %d", time.Since(start).Microseconds())
	case <-time.After(3 * time.Minute):
		pprof.StopCPUProfile()
		say("timeout")
	}
	io.Copy(io.Discard, in) // until the parent closes stdin
	cancel()
	run.Wait()
	wait.Wait()
	return nil
}

// stormChild is the running helper.
type stormChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
	done  chan struct{}
}

// profile, if not empty, is where the helper writes its CPU profile of
// the storm; cpu, if not negative, the CPU it is pinned to.
func startStormChild(tb testing.TB, l *lab, peers []*peer, want int, profile string, cpu int) *stormChild {
	tb.Helper()
	spec := stormSpec{Bundle: l.bundle.Encode()}
	for _, p := range peers {
		spec.Peers = append(spec.Peers, struct{ Cert, Key []byte }{p.cert, p.key})
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		tb.Fatal(err)
	}
	f := tb.TempDir() + "/storm.json"
	if err := os.WriteFile(f, raw, 0o600); err != nil {
		tb.Fatal(err)
	}
	c := &stormChild{cmd: niced(pinned(exec.Command(os.Args[0], "-test.run=^$"), cpu), *stormNice), done: make(chan struct{})}
	c.cmd.Env = append(os.Environ(), helperEnv+"="+f+","+strconv.Itoa(want)+","+profile)
	c.cmd.Stderr = os.Stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { c.cmd.Wait(); close(c.done) }()
	tb.Cleanup(c.stop)
	c.lines = bufio.NewScanner(stdout)
	if !c.lines.Scan() || c.lines.Text() != "ready" {
		tb.Fatalf("storm helper said %q, want ready", c.lines.Text())
	}
	return c
}

// stop closes the helper's stdin (it ends its clients and exits), and ends
// it by its PID if it has not within 10 s.
func (c *stormChild) stop() {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}
