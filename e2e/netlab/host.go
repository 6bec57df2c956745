package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Host is one network namespace of the lab: an Internet host, a site's
// host, or a site's router.
type Host struct {
	Name string     // lab-level name: "b1", "cone-h1", "cone-r", "dnat-cgn"
	NS   string     // network namespace name: "pvcID-" + Name
	Addr netip.Addr // its address on its own network (LAN, carrier NAT or Internet)
	Site *Site      // the site it belongs to; nil for Internet hosts
	lab  *Lab
}

func (h *Host) String() string { return fmt.Sprintf("%s (%s, %s)", h.Name, h.NS, h.Addr) }

// Command returns a command that runs argv in the host's namespace, through
// `ip netns exec`, so that /etc/netns/NS files are bind-mounted over /etc.
func (h *Host) Command(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// Run runs argv in the host's namespace and returns its combined output. A
// non-zero exit is an error that carries the output.
func (h *Host) Run(ctx context.Context, argv ...string) (string, error) {
	out, err := h.Command(ctx, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %s: %w: %s", h.Name, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Start runs argv in the background in the host's namespace. Its output
// goes to a log file in the run directory. The lab remembers its PID and
// ends it in Close; Stop ends it earlier.
func (h *Host) Start(argv ...string) (*Proc, error) {
	return h.lab.start(h, argv)
}

// Do runs fn on an OS thread that has entered the host's network
// namespace. Sockets that fn creates stay in that namespace and may be
// used from any goroutine afterwards. fn must not start goroutines that
// create sockets (they would run on other threads). The thread is thrown
// away when fn returns, so the namespace never leaks to other goroutines.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := enterNS(h.NS); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func enterNS(ns string) error {
	f, err := os.Open(filepath.Join("/run/netns", ns))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	return nil
}

// WriteEtc writes /etc/netns/NS/name, which `ip netns exec` bind-mounts
// over /etc/name for commands run in this host (hosts, resolv.conf, ...).
// Only files that exist under /etc can be overridden this way.
func (h *Host) WriteEtc(name string, data []byte) error {
	if strings.Contains(name, "/") || name == "" || name[0] == '.' {
		return fmt.Errorf("WriteEtc %q: want a plain file name", name)
	}
	dir := filepath.Join("/etc/netns", h.NS)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), data, 0o644)
}

// Proc is a process started in the lab.
type Proc struct {
	Host *Host
	Argv []string
	Log  string // path of the file that holds its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
	once sync.Once
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its error.
func (p *Proc) Wait() error { <-p.done; return p.err }

// Output returns what the process has written so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// Stop ends the process by its PID: SIGTERM, then SIGKILL after grace.
// Stopping a process that already exited is not an error.
func (p *Proc) Stop(grace time.Duration) error {
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return nil
}

func (l *Lab) start(h *Host, argv []string) (*Proc, error) {
	if len(argv) == 0 {
		return nil, errors.New("start: empty command")
	}
	l.mu.Lock()
	l.nproc++
	logPath := filepath.Join(l.run.dir, fmt.Sprintf("%s-%d-%s.log", h.Name, l.nproc, filepath.Base(argv[0])))
	l.mu.Unlock()
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = logf, logf
	// If the process that built the lab dies, its children die too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startOnSpawner(cmd); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", h.Name, argv[0], err)
	}
	p := &Proc{Host: h, Argv: argv, Log: logPath, cmd: cmd, done: make(chan struct{})}
	if err := l.run.recordProc(p.PID(), h.NS); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p, nil
}

// runCmd runs a command outside the lab's hosts (ip, tc with -n), with
// stdin, and returns an error carrying its output.
func runCmd(ctx context.Context, stdin string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Pdeathsig is delivered when the *thread* that forked the child exits, and
// Do throws threads away. So lab processes are forked from one goroutine
// locked to a thread that lives as long as the process.
var (
	spawnOnce sync.Once
	spawnReq  chan spawnCall
)

type spawnCall struct {
	cmd  *exec.Cmd
	errc chan error
}

func startOnSpawner(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReq = make(chan spawnCall)
		go func() {
			runtime.LockOSThread() // for the life of the process
			for c := range spawnReq {
				c.errc <- c.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnReq <- spawnCall{cmd, errc}
	return <-errc
}
