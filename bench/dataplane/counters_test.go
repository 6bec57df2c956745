package dataplane

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/pvc-project/pvc/e2e/netlab"
)

// counters are the loss counters of the two hosts that tell why a run
// fell short of the link: TCP retransmissions, UDP receive-buffer drops,
// drops on interfaces (TUN devices included) and in the shaper.
type counters map[string]int64

// lossCounters reads the counters of each host, keyed "HOST:NAME".
func lossCounters(ctx context.Context, hosts ...*netlab.Host) counters {
	c := counters{}
	for _, h := range hosts {
		if out, err := h.Run(ctx, "cat", "/proc/net/snmp"); err == nil {
			for k, v := range parseSNMP(out) {
				switch k {
				case "Tcp:RetransSegs", "Udp:RcvbufErrors", "Udp:SndbufErrors", "Udp:InErrors":
					c[h.Name+":"+k] = v
				}
			}
		}
		if out, err := h.Run(ctx, "cat", "/proc/net/dev"); err == nil {
			for k, v := range parseDevDrops(out) {
				c[h.Name+":"+k] = v
			}
		}
		if out, err := h.Run(ctx, "tc", "-s", "qdisc", "show", "dev", "eth0"); err == nil {
			if i := strings.Index(out, "dropped "); i >= 0 {
				f := strings.FieldsFunc(out[i+len("dropped "):], func(r rune) bool { return r == ',' || r == ' ' })
				if len(f) > 0 {
					if v, err := strconv.ParseInt(f[0], 10, 64); err == nil {
						c[h.Name+":qdisc-drops"] = v
					}
				}
			}
		}
	}
	return c
}

// cpuBusy returns the machine's busy and total CPU time so far (jiffies,
// all CPUs), from /proc/stat.
func cpuBusy() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

// since returns the counters that grew since before, as "name +n" pairs
// ("no losses" when none did). A qdisc replaced in between restarts its
// count; a count that went down is reported as it is now.
func (c counters) since(before counters) string {
	var out []string
	for k, v := range c {
		d := v - before[k]
		if d < 0 {
			d = v
		}
		if d > 0 {
			out = append(out, fmt.Sprintf("%s +%d", k, d))
		}
	}
	if len(out) == 0 {
		return "no losses"
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// parseSNMP reads /proc/net/snmp's pairs of header and value lines into
// "Proto:Field" counters.
func parseSNMP(s string) map[string]int64 {
	m := map[string]int64{}
	lines := strings.Split(s, "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		h, v := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(h) != len(v) || len(h) == 0 || h[0] != v[0] {
			continue
		}
		for j := 1; j < len(h); j++ {
			if n, err := strconv.ParseInt(v[j], 10, 64); err == nil {
				m[strings.TrimSuffix(h[0], ":")+":"+h[j]] = n
			}
		}
	}
	return m
}

// parseDevDrops reads the receive and transmit drop counts of every
// interface in /proc/net/dev, as "IF:rx-drop" and "IF:tx-drop".
func parseDevDrops(s string) map[string]int64 {
	m := map[string]int64{}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 12 {
			continue
		}
		name = strings.TrimSpace(name)
		if v, err := strconv.ParseInt(f[3], 10, 64); err == nil {
			m[name+":rx-drop"] = v
		}
		if v, err := strconv.ParseInt(f[11], 10, 64); err == nil {
			m[name+":tx-drop"] = v
		}
	}
	return m
}
