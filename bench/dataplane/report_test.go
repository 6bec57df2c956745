package dataplane

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/pvc-project/pvc/internal/plot"
)

// row is one figure of the summary.
type row struct {
	Metric  string
	Value   float64
	Unit    string
	RefName string  // what Value is compared with; "" none
	Ref     float64 // its value
	Ratio   float64 // Value/Ref or the figure's own ratio; 0: none
	Target  string  // "" none
	Met     string  // yes, no or ""
}

func (r row) String() string {
	s := fmt.Sprintf("%-62s %9.2f %-7s", r.Metric, r.Value, r.Unit)
	if r.RefName != "" {
		s += fmt.Sprintf(" | %s %.2f", r.RefName, r.Ref)
	}
	if r.Ratio != 0 {
		s += fmt.Sprintf(" | ratio %.3f", r.Ratio)
	}
	if r.Target != "" {
		s += fmt.Sprintf(" | target %s: %s", r.Target, r.Met)
	}
	return s
}

type summary struct{ rows []row }

func (s *summary) add(r row) { s.rows = append(s.rows, r) }

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

// figures adds the throughput and latency figures of the NetPIPE runs.
func (s *summary) figures(res map[string]map[string][]point) {
	for _, sh := range []string{"1gbit", "unshaped"} {
		r := res[sh]
		if !measured(r) {
			continue // not asked for (-dp.shapes)
		}
		ref := at(r["reference"], npUpper).Mbps
		s.add(row{Metric: fmt.Sprintf("throughput at 4 MB, reference (%s)", sh), Value: ref, Unit: "Mbit/s"})
		for _, name := range []string{"pvc", "wireguard-go"} {
			v := at(r[name], npUpper).Mbps
			rw := row{Metric: fmt.Sprintf("throughput at 4 MB, %s (%s)", name, sh), Value: v, Unit: "Mbit/s",
				RefName: "reference", Ref: ref, Ratio: v / ref}
			if sh == "1gbit" && name == "pvc" {
				rw.Target, rw.Met = "≥ 0.95 of reference", yes(v/ref >= 0.95)
			}
			s.add(rw)
		}
	}
	if u := res["unshaped"]; measured(u) {
		pvc, wg := at(u["pvc"], npUpper).Mbps, at(u["wireguard-go"], npUpper).Mbps
		s.add(row{Metric: "unshaped throughput at 4 MB, PVC / wireguard-go", Value: pvc, Unit: "Mbit/s",
			RefName: "wireguard-go", Ref: wg, Ratio: pvc / wg, Target: "≥ 1.00", Met: yes(pvc/wg >= 1.0)})
	}
	for _, sh := range []string{"unshaped", "1gbit"} {
		r := res[sh]
		if !measured(r) || !slices.ContainsFunc(r["reference"], func(p point) bool { return p.Size <= 16 }) {
			continue // not asked for, or no small messages (-dp.lower)
		}
		ref := smallLatency(r["reference"])
		s.add(row{Metric: fmt.Sprintf("small-message latency (1-16 B, one way), reference (%s)", sh), Value: ref, Unit: "µs"})
		addPVC, addWG := smallLatency(r["pvc"])-ref, smallLatency(r["wireguard-go"])-ref
		s.add(row{Metric: fmt.Sprintf("latency added by wireguard-go (%s)", sh), Value: addWG, Unit: "µs"})
		rw := row{Metric: fmt.Sprintf("latency added by PVC (%s)", sh), Value: addPVC, Unit: "µs",
			RefName: "added by wireguard-go", Ref: addWG, Ratio: addPVC / addWG}
		if sh == "unshaped" {
			rw.Target, rw.Met = "≤ 1.1×", yes(addPVC/addWG <= 1.1)
		}
		s.add(rw)
	}
}

// measured reports whether a shape has points for all three setups.
func measured(r map[string][]point) bool {
	return len(r["reference"]) > 0 && len(r["pvc"]) > 0 && len(r["wireguard-go"]) > 0
}

// writeResults writes netpipe.csv (every median point), summary.csv and the
// plots: throughput and latency against message size, per shape.
func writeResults(dir string, res map[string]map[string][]point, sum summary) error {
	var rows [][]string
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 3, 64) }
	setups := []string{"reference", "pvc", "wireguard-go"}
	for _, sh := range []string{"unshaped", "1gbit"} {
		for _, name := range setups {
			for _, p := range res[sh][name] {
				rows = append(rows, []string{sh, name, strconv.Itoa(p.Size), f(p.Mbps), f(p.Usec)})
			}
		}
	}
	if err := plot.WriteCSV(filepath.Join(dir, "netpipe.csv"), []string{"link", "setup", "bytes", "mbit_s", "one_way_us"}, rows); err != nil {
		return err
	}
	rows = nil
	for _, r := range sum.rows {
		rows = append(rows, []string{r.Metric, f(r.Value), r.Unit, r.RefName, f(r.Ref), f(r.Ratio), r.Target, r.Met})
	}
	if err := plot.WriteCSV(filepath.Join(dir, "summary.csv"), []string{"metric", "value", "unit", "compared_with", "its_value", "ratio", "target", "met"}, rows); err != nil {
		return err
	}
	titles := map[string]string{"unshaped": "unshaped veth", "1gbit": "link shaped to 1 Gbit/s (tbf)"}
	for _, sh := range []string{"unshaped", "1gbit"} {
		if !measured(res[sh]) {
			continue
		}
		thr := plot.Chart{Title: "NetPIPE throughput, " + titles[sh], XLabel: "message size (bytes)", YLabel: "Mbit/s", LogX: true}
		lat := plot.Chart{Title: "NetPIPE latency (one way), " + titles[sh], XLabel: "message size (bytes)", YLabel: "µs", LogX: true, LogY: true}
		for _, name := range setups {
			var xs, mb, us []float64
			for _, p := range res[sh][name] {
				xs, mb, us = append(xs, float64(p.Size)), append(mb, p.Mbps), append(us, p.Usec)
			}
			thr.Series = append(thr.Series, plot.Series{Name: name, X: xs, Y: mb})
			lat.Series = append(lat.Series, plot.Series{Name: name, X: xs, Y: us})
		}
		if err := thr.WritePNG(filepath.Join(dir, "throughput-"+sh+".png")); err != nil {
			return err
		}
		if err := lat.WritePNG(filepath.Join(dir, "latency-"+sh+".png")); err != nil {
			return err
		}
	}
	return nil
}
