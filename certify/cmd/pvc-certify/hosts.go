package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/pvc-project/pvc/certify"
	"github.com/pvc-project/pvc/internal/cli"
)

const hostsHelp = `Shows what the state file records about every host: whether it is
blacklisted (and the evidence), the spot-checks it passed and failed, its
credibility (Sarmenta's, for --saboteur-bound), the results of it that were
accepted and its credits (CPU seconds of accepted work).`

type hostRow struct {
	Host         string            `json:"host"`
	Blacklisted  bool              `json:"blacklisted"`
	ChecksPassed int               `json:"checks_passed"`
	ChecksFailed int               `json:"checks_failed"`
	Credibility  float64           `json:"credibility"`
	Accepted     int               `json:"accepted"`
	CPUSeconds   float64           `json:"cpu_seconds"`
	Evidence     *certify.Evidence `json:"evidence,omitempty"`
}

func hostsVerb() cli.Verb {
	return cli.Verb{Name: "hosts", Summary: "show blacklist, credibility and credits of every host", Run: hostsCmd}
}

func hostsCmd(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := cli.NewFlagSet("hosts", "pvc-certify hosts [--state FILE] [--json]", hostsHelp, stdout)
	state := fs.String("state", "certify-state.json", "state file written by pvc-certify run")
	asJSON := fs.Bool("json", false, "print JSON")
	bound := fs.Float64("saboteur-bound", 0.1, "assumed upper bound of the fraction of saboteurs, for credibility")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return cli.Usagef("hosts: unexpected argument %q", pos[0])
	}
	if *bound <= 0 || *bound >= 1 {
		return cli.Usagef("hosts: --saboteur-bound %v: want a fraction between 0 and 1", *bound)
	}
	st, err := certify.LoadState(*state)
	if err != nil {
		return cli.Usagef("hosts: --state: %v", err)
	}
	rows := []hostRow{}
	for _, h := range st.Names() {
		r := st.Hosts[h]
		cr := certify.HostCredibility(*bound, r.ChecksPassed)
		if r.Blacklisted {
			cr = 0
		}
		rows = append(rows, hostRow{h, r.Blacklisted, r.ChecksPassed, r.ChecksFailed, cr, r.Accepted, r.CPUSeconds, r.Evidence})
	}
	if *asJSON {
		b, err := json.MarshalIndent(rows, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintf(stdout, "no host recorded in %s\n", *state)
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tSTATUS\tCHECKS OK/FAILED\tCREDIBILITY\tACCEPTED\tCREDITS (CPU s)\tEVIDENCE")
	for _, r := range rows {
		status, ev := "ok", ""
		if r.Blacklisted {
			status = "blacklisted"
			e := r.Evidence
			ev = fmt.Sprintf("%s %s: job %s task %s: got %.12s, want %.12s", e.Time.Format("2006-01-02T15:04:05Z"), e.Kind, e.Job, e.Task, e.Got, e.Expected)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%.4f\t%d\t%.3f\t%s\n", r.Host, status, r.ChecksPassed, r.ChecksFailed, r.Credibility, r.Accepted, r.CPUSeconds, ev)
	}
	return tw.Flush()
}
