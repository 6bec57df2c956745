package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
)

// point is one message size of a NetPIPE run.
type point struct {
	Size int     // bytes
	Mbps float64 // throughput
	Usec float64 // one-way time (half a round trip), microseconds
}

// npUpper is the largest message size of the runs: the figures' 4 MB.
const npUpper = 4 << 20

// npTimeout bounds one NPtcp run (a run that stalls is killed and
// reported, never waited for).
const npTimeout = 3 * time.Minute

// netpipe runs NPtcp once from one host to another at dst: the receiver
// in to, the transmitter in from, message sizes up to npUpper with
// NetPIPE's default perturbations (-p 0 stalls on this machine's NetPIPE
// 3.7.2). out is the transmitter's output file.
func netpipe(from, to *netlab.Host, dst netip.Addr, out string) ([]point, error) {
	upper := strconv.Itoa(npUpper)
	args := []string{"-u", upper}
	if *lowerFlag > 0 {
		args = append(args, "-l", strconv.Itoa(*lowerFlag))
	}
	recv, err := to.Start(append(pinned(to, "NPtcp"), args...)...)
	if err != nil {
		return nil, err
	}
	defer recv.Stop(time.Second)
	time.Sleep(300 * time.Millisecond) // the receiver's listen (probing its port would take its one connection)
	ctx, cancel := context.WithTimeout(context.Background(), npTimeout)
	defer cancel()
	if _, err := from.Run(ctx, append(pinned(from, "NPtcp", "-h", dst.String(), "-o", out), args...)...); err != nil {
		return nil, fmt.Errorf("NPtcp %s -> %s (%v): %w", from.Name, to.Name, dst, err)
	}
	return parseNP(out)
}

// parseNP reads NPtcp's output file: size, Mbit/s, seconds per line.
func parseNP(path string) ([]point, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pts []point
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var size, mbps, secs float64
		if _, err := fmt.Sscan(line, &size, &mbps, &secs); err != nil {
			return nil, fmt.Errorf("%s: %q: %w", filepath.Base(path), line, err)
		}
		pts = append(pts, point{Size: int(size), Mbps: mbps, Usec: secs * 1e6})
	}
	if len(pts) == 0 {
		return nil, fmt.Errorf("%s: no points", path)
	}
	return pts, nil
}

// medianRuns merges runs point by point (same message size) into medians.
func medianRuns(runs [][]point) []point {
	bySize := map[int][]point{}
	for _, r := range runs {
		for _, p := range r {
			bySize[p.Size] = append(bySize[p.Size], p)
		}
	}
	var out []point
	for size, ps := range bySize {
		var mb, us []float64
		for _, p := range ps {
			mb, us = append(mb, p.Mbps), append(us, p.Usec)
		}
		out = append(out, point{Size: size, Mbps: median(mb), Usec: median(us)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Size < out[j].Size })
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// at returns the point whose size is nearest to size.
func at(pts []point, size int) point {
	best := pts[0]
	for _, p := range pts {
		if abs(p.Size-size) < abs(best.Size-size) {
			best = p
		}
	}
	return best
}

// smallLatency is the median one-way time of the messages of 1 to 16
// bytes (NetPIPE's latency figure).
func smallLatency(pts []point) float64 {
	var us []float64
	for _, p := range pts {
		if p.Size <= 16 {
			us = append(us, p.Usec)
		}
	}
	return median(us)
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// pinCPU maps a host to the CPU its processes are pinned to (-dp.pin).
var pinCPU = map[string]int{}

// pinned prefixes argv with taskset when h is pinned.
func pinned(h *netlab.Host, argv ...string) []string {
	if c, ok := pinCPU[h.Name]; ok {
		return append([]string{"taskset", "-c", strconv.Itoa(c)}, argv...)
	}
	return argv
}

// pinPID pins all threads of a running process of h.
func pinPID(h *netlab.Host, pid int) error {
	if c, ok := pinCPU[h.Name]; ok {
		if out, err := exec.Command("taskset", "-a", "-p", "-c", strconv.Itoa(c), strconv.Itoa(pid)).CombinedOutput(); err != nil {
			return fmt.Errorf("taskset %d: %v: %s", pid, err, out)
		}
	}
	return nil
}
