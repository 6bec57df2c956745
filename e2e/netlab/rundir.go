package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RunRoot holds one directory per lab run: its owner's PID file, the PIDs
// of the processes it started, and their logs.
var RunRoot = "/run/pvc-lab"

// runDir is one run's directory.
type runDir struct {
	id  string
	dir string
	mu  sync.Mutex // serialises appends to procs
}

// procStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/PID/stat), which tells a live process from a later
// one that reuses its PID.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, errors.New("short /proc stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// alive reports whether pid runs and is still the process that started at
// start.
func alive(pid int, start uint64) bool {
	st, err := procStart(pid)
	return err == nil && st == start
}

// newRunDir creates the directory of a new run with an unused ID and
// records the calling process as its owner.
func newRunDir() (*runDir, error) {
	if err := os.MkdirAll(RunRoot, 0o755); err != nil {
		return nil, err
	}
	start, err := procStart(os.Getpid())
	if err != nil {
		return nil, err
	}
	for i := 0; i < 20; i++ {
		id := randomID()
		dir := filepath.Join(RunRoot, id)
		if err := os.Mkdir(dir, 0o755); errors.Is(err, os.ErrExist) {
			continue
		} else if err != nil {
			return nil, err
		}
		if _, err := os.Stat(filepath.Join("/run/netns", "pvc"+id+"-inet")); err == nil {
			os.Remove(dir)
			continue // a namespace of that ID exists without a run dir: not ours
		}
		owner := fmt.Sprintf("%d %d\n", os.Getpid(), start)
		if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(owner), 0o644); err != nil {
			return nil, err
		}
		return &runDir{id: id, dir: dir}, nil
	}
	return nil, errors.New("no free lab run ID")
}

const idChars = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomID() string {
	n := time.Now().UnixNano() ^ int64(os.Getpid())<<20
	var b [4]byte
	f, err := os.Open("/dev/urandom")
	if err == nil {
		_, err = io.ReadFull(f, b[:])
		f.Close()
	}
	if err != nil {
		for i := range b {
			b[i] = byte(n >> (8 * i))
		}
	}
	id := make([]byte, 4)
	for i := range id {
		id[i] = idChars[int(b[i])%len(idChars)]
	}
	return string(id)
}

func (r *runDir) recordProc(pid int, ns string) error {
	start, err := procStart(pid)
	if err != nil {
		start = 0 // already gone: nothing to sweep later
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(r.dir, "procs"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%d %d %s\n", pid, start, ns)
	return err
}

// namespaces returns the names of the network namespaces of run id.
func namespaces(id string) ([]string, error) {
	ents, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pvc"+id+"-") {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// killRecorded ends, by PID, the processes a run recorded that are still
// the same processes, and waits up to grace for them to go.
func killRecorded(dir string, grace time.Duration) {
	f, err := os.Open(filepath.Join(dir, "procs"))
	if err != nil {
		return
	}
	defer f.Close()
	type rec struct {
		pid   int
		start uint64
	}
	var live []rec
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r rec
		var ns string
		if _, err := fmt.Sscanf(sc.Text(), "%d %d %s", &r.pid, &r.start, &ns); err != nil || r.pid <= 1 || r.start == 0 {
			continue
		}
		if alive(r.pid, r.start) {
			_ = syscall.Kill(r.pid, syscall.SIGTERM)
			live = append(live, r)
		}
	}
	deadline := time.Now().Add(grace)
	for _, r := range live {
		for alive(r.pid, r.start) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(r.pid, r.start) {
			_ = syscall.Kill(r.pid, syscall.SIGKILL)
		}
	}
}

// removeRun deletes a run's namespaces, /etc/netns entries and directory.
func removeRun(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // teardown has no caller context
	defer cancel()
	var errs []error
	nss, err := namespaces(id)
	errs = append(errs, err)
	for _, ns := range nss {
		if err := runCmd(ctx, "", "ip", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	etc, _ := filepath.Glob(filepath.Join("/etc/netns", "pvc"+id+"-*"))
	for _, d := range etc {
		errs = append(errs, os.RemoveAll(d))
	}
	errs = append(errs, os.RemoveAll(filepath.Join(RunRoot, id)))
	return errors.Join(errs...)
}

// SweepReport says what Sweep did.
type SweepReport struct {
	Removed []string // run IDs whose owner had died, now removed
	Live    []string // run IDs whose owner still runs: left alone
	Unknown []string // pvc* namespaces without a run directory: left alone
}

// Sweep removes the leftovers (processes, namespaces, /etc/netns entries,
// run directory) of every lab run whose owning process has died. It never
// touches a live run, nor namespaces that no run directory claims.
func Sweep() (SweepReport, error) {
	var rep SweepReport
	var errs []error
	ents, err := os.ReadDir(RunRoot)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return rep, err
	}
	known := map[string]bool{}
	for _, e := range ents {
		id := e.Name()
		dir := filepath.Join(RunRoot, id)
		known[id] = true
		var pid int
		var start uint64
		b, err := os.ReadFile(filepath.Join(dir, "owner"))
		if err == nil {
			_, err = fmt.Sscanf(string(b), "%d %d", &pid, &start)
		}
		if err == nil && alive(pid, start) {
			rep.Live = append(rep.Live, id)
			continue
		}
		if err != nil {
			// No readable owner: a run dir being created right now has
			// none for an instant; leave young ones alone.
			if fi, serr := os.Stat(dir); serr == nil && time.Since(fi.ModTime()) < time.Minute {
				rep.Live = append(rep.Live, id)
				continue
			}
		}
		killRecorded(dir, 2*time.Second)
		if err := removeRun(id); err != nil {
			errs = append(errs, fmt.Errorf("sweep run %s: %w", id, err))
			continue
		}
		rep.Removed = append(rep.Removed, id)
	}
	nss, _ := os.ReadDir("/run/netns")
	for _, e := range nss {
		n := e.Name()
		if !strings.HasPrefix(n, "pvc") {
			continue
		}
		id, _, ok := strings.Cut(strings.TrimPrefix(n, "pvc"), "-")
		if !ok || !known[id] {
			rep.Unknown = append(rep.Unknown, n)
		}
	}
	return rep, errors.Join(errs...)
}
