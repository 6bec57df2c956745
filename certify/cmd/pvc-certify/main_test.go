package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/certify"
	"github.com/pvc-project/pvc/internal/cli"
)

func runMain(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := program().Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// workdir writes a job file of n echo jobs (and a check) into a temporary
// directory and returns it.
func workdir(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	var b strings.Builder
	for i := range n {
		b.WriteString("job j" + string(rune('a'+i)) + " echo result " + string(rune('a'+i)) + "\n")
	}
	b.WriteString("check k1 k1.expect echo known\n")
	os.WriteFile(filepath.Join(dir, "jobs"), []byte(b.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "k1.expect"), []byte("known\n"), 0o644)
	return dir
}

func TestBadInput(t *testing.T) {
	dir := workdir(t, 3)
	jobs := filepath.Join(dir, "jobs")
	badJobs := filepath.Join(dir, "bad.jobs")
	os.WriteFile(badJobs, []byte("job a\n"), 0o644)
	badState := filepath.Join(dir, "bad.state")
	os.WriteFile(badState, []byte(`{"version":9,"hosts":{}}`), 0o644)
	noExpect := filepath.Join(dir, "noexpect.jobs")
	os.WriteFile(noExpect, []byte("job a echo\ncheck k missing.expect echo\n"), 0o644)
	st := filepath.Join(dir, "state.json")
	for _, c := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no command", nil, "missing command"},
		{"unknown command", []string{"vote"}, `unknown command "vote"`},
		{"run without JOBFILE", []string{"run"}, "exactly one JOBFILE"},
		{"run with two JOBFILEs", []string{"run", jobs, jobs}, "exactly one JOBFILE, got 2"},
		{"unknown flag", []string{"run", "--replica", "2", jobs}, "flag provided but not defined: -replica"},
		{"scheduler", []string{"run", "--scheduler", "condor", jobs}, `--scheduler "condor": want slurm or local`},
		{"policy", []string{"run", "--policy", "majority", jobs}, `unknown policy "majority"`},
		{"replicas 0", []string{"run", "--replicas", "0", jobs}, "--replicas 0: want 1 to 50"},
		{"replicas 51", []string{"run", "--replicas", "51", jobs}, "--replicas 51"},
		{"replicas not a number", []string{"run", "--replicas", "two", jobs}, "invalid value \"two\" for flag -replicas"},
		{"spot-every negative", []string{"run", "--spot-every", "-1", jobs}, "spot-every -1"},
		{"spot-every 1", []string{"run", "--spot-every", "1", jobs}, "every slot would be a check"},
		{"target-error 0", []string{"run", "--target-error", "0", jobs}, "--target-error 0"},
		{"target-error 1", []string{"run", "--target-error", "1", jobs}, "--target-error 1"},
		{"target-error text", []string{"run", "--target-error", "low", jobs}, "invalid value \"low\""},
		{"saboteur-bound", []string{"run", "--saboteur-bound", "1.5", jobs}, "--saboteur-bound 1.5"},
		{"max-replicas", []string{"run", "--max-replicas", "-1", jobs}, "max replicas -1"},
		{"window", []string{"run", "--window", "-2", jobs}, "window -2"},
		{"compare blank", []string{"run", "--compare", "  ", jobs}, "--compare: compare command: empty"},
		{"state empty", []string{"run", "--state", "", jobs}, "--state: want a file name"},
		{"seed", []string{"run", "--seed", "-1", jobs}, "invalid value \"-1\" for flag -seed"},
		{"local-hosts 0", []string{"run", "--local-hosts", "0", jobs}, "--local-hosts 0"},
		{"local-hosts too many", []string{"run", "--local-hosts", "1001", jobs}, "--local-hosts 1001"},
		{"local-parallel", []string{"run", "--local-parallel", "-1", jobs}, "--local-parallel -1"},
		{"local-wrap without =", []string{"run", "--local-wrap", "local01", jobs}, "want HOST=WRAPPER"},
		{"local-wrap empty wrapper", []string{"run", "--local-wrap", "local01=", jobs}, "want HOST=WRAPPER"},
		{"local-wrap empty value", []string{"run", "--local-wrap", "", jobs}, "empty value"},
		{"local-wrap unknown host", []string{"run", "--local-wrap", "local09=cat", jobs}, `no host "local09"`},
		{"task-timeout", []string{"run", "--task-timeout", "-1s", jobs}, "--task-timeout -1s"},
		{"task-timeout text", []string{"run", "--task-timeout", "soon", jobs}, "invalid value \"soon\""},
		{"slurm-poll", []string{"run", "--scheduler", "slurm", "--slurm-poll", "0s", jobs}, "--slurm-poll 0s"},
		{"slurm-conf missing", []string{"run", "--scheduler", "slurm", "--slurm-conf", filepath.Join(dir, "none.conf"), jobs}, "--slurm-conf"},
		{"slurm-conf directory", []string{"run", "--scheduler", "slurm", "--slurm-conf", dir, jobs}, "not a readable file"},
		{"JOBFILE missing", []string{"run", "--state", st, filepath.Join(dir, "nope")}, "JOBFILE"},
		{"JOBFILE directory", []string{"run", "--state", st, dir}, "not a regular file"},
		{"JOBFILE content", []string{"run", "--state", st, badJobs}, "line 1: job a: missing COMMAND"},
		{"JOBFILE expected answer", []string{"run", "--state", st, noExpect}, "check k: expected answer"},
		{"state file content", []string{"run", "--state", badState, jobs}, "version 9"},
		{"keep-losers value", []string{"run", "--keep-losers=maybe", jobs}, "invalid boolean value \"maybe\" for -keep-losers"},
		{"json value", []string{"run", "--json=2x", jobs}, "invalid boolean value"},
		{"quiet value", []string{"run", "--quiet=no", jobs}, "invalid boolean value"},
		{"state is a directory", []string{"run", "--state", dir, jobs}, "--state " + dir + ": is a directory"},
		{"state in a missing directory", []string{"run", "--state", filepath.Join(dir, "no", "s.json"), jobs}, "its directory does not exist"},
		{"report is a directory", []string{"run", "--report", dir, jobs}, "--report " + dir + ": is a directory"},
		{"report in a missing directory", []string{"run", "--report", filepath.Join(dir, "no", "r.json"), jobs}, "its directory does not exist"},
		{"out is a file", []string{"run", "--out", jobs, jobs}, "--out " + jobs + ": not a directory"},
		{"slurm-workdir is a file", []string{"run", "--scheduler", "slurm", "--slurm-workdir", jobs, jobs}, "--slurm-workdir " + jobs + ": not a directory"},
		{"slurm-partition", []string{"run", "--scheduler", "slurm", "--slurm-partition", "a,b", jobs}, `--slurm-partition "a,b"`},
		{"slurm-wrapper blank", []string{"run", "--scheduler", "slurm", "--slurm-wrapper", " ", jobs}, "--slurm-wrapper: blank"},
		{"slurm-poll text", []string{"run", "--scheduler", "slurm", "--slurm-poll", "fast", jobs}, "invalid value \"fast\""},
		{"hosts json value", []string{"hosts", "--json=yes please"}, "invalid boolean value"},
		{"hosts argument", []string{"hosts", "extra"}, `unexpected argument "extra"`},
		{"hosts flag", []string{"hosts", "--all"}, "flag provided but not defined: -all"},
		{"hosts saboteur-bound", []string{"hosts", "--saboteur-bound", "0"}, "--saboteur-bound 0"},
		{"hosts state file", []string{"hosts", "--state", badState}, "version 9"},
		{"hosts state is a directory", []string{"hosts", "--state", dir}, "--state"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runMain(c.args...)
			if code != cli.ExitUsage || !strings.Contains(stderr, c.msg) {
				t.Fatalf("exit %d, stderr %q: want exit 2 and %q", code, stderr, c.msg)
			}
		})
	}
	if _, err := os.Stat(st); err == nil {
		t.Errorf("a rejected run wrote the state file")
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runMain("--help")
	if code != 0 || !strings.Contains(out, "run") || !strings.Contains(out, "hosts") || !strings.Contains(out, "spot-check") {
		t.Fatalf("--help: exit %d:\n%s", code, out)
	}
	code, out, _ = runMain("run", "--help")
	for _, want := range []string{"JOBFILE", "check NAME EXPECTFILE", "2m+1", "credibility", "-spot-every", "-slurm-conf", "-local-wrap", "Exit status"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("run --help (exit %d) lacks %q", code, want)
		}
	}
	code, out, _ = runMain("hosts", "--help")
	if code != 0 || !strings.Contains(out, "credits") {
		t.Errorf("hosts --help: exit %d:\n%s", code, out)
	}
}

// TestRunLocalWithSaboteur runs a job file on four local hosts, one of
// which corrupts its output through a wrapper.
func TestRunLocalWithSaboteur(t *testing.T) {
	dir := workdir(t, 6)
	sab := filepath.Join(dir, "sabotage")
	os.WriteFile(sab, []byte("#!/bin/sh\n\"$@\" | tr a-z A-Z\n"), 0o755)
	st := filepath.Join(dir, "state.json")
	rep := filepath.Join(dir, "report.json")
	out := filepath.Join(dir, "results")
	code, stdout, stderr := runMain("run", "--local-hosts", "5", "--local-wrap", "local02="+sab, "--spot-every", "3",
		"--seed", "1", "--state", st, "--out", out, "--report", rep, "--json", filepath.Join(dir, "jobs"))
	if code != 0 {
		t.Fatalf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	if !strings.Contains(stderr, "pvc-certify: jobs 6/6 done, 6 accepted") || !strings.Contains(stderr, "1 hosts blacklisted") {
		t.Errorf("progress lines:\n%s", stderr)
	}
	var r certify.Report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("--json output: %v\n%s", err, stdout)
	}
	if r.Accepted != 6 || len(r.Blacklisted) != 1 || r.Blacklisted[0] != "local02" {
		t.Fatalf("report %+v: want 6 accepted and local02 blacklisted", r)
	}
	if b, err := os.ReadFile(rep); err != nil || !bytes.Contains(b, []byte(`"accepted": 6`)) {
		t.Errorf("--report file: %v %s", err, b)
	}
	for i := range 6 {
		c := string(rune('a' + i))
		b, err := os.ReadFile(filepath.Join(out, "j"+c+".out"))
		if err != nil || string(b) != "result "+c+"\n" {
			t.Errorf("accepted result j%s: %q %v", c, b, err)
		}
	}
	code, stdout, _ = runMain("hosts", "--state", st)
	if code != 0 || !strings.Contains(stdout, "local02  blacklisted") || !strings.Contains(stdout, "CREDITS") {
		t.Errorf("hosts: exit %d\n%s", code, stdout)
	}
	code, stdout, _ = runMain("hosts", "--state", st, "--json")
	var rows []hostRow
	if err := json.Unmarshal([]byte(stdout), &rows); code != 0 || err != nil || len(rows) != 5 {
		t.Fatalf("hosts --json: exit %d, %v: %s", code, err, stdout)
	}
	for _, h := range rows {
		if h.Blacklisted != (h.Host == "local02") || (h.Blacklisted && h.Evidence == nil) {
			t.Errorf("host %+v", h)
		}
		if !h.Blacklisted && h.Accepted > 0 && h.CPUSeconds < 0 {
			t.Errorf("host %+v: negative credits", h)
		}
	}
	// A second run keeps local02 out: it gets no task at all.
	code, stdout, stderr = runMain("run", "--local-hosts", "5", "--local-wrap", "local02="+sab, "--state", st,
		"--out", "", "--json", filepath.Join(dir, "jobs"))
	if code != 0 {
		t.Fatalf("second run: exit %d\n%s", code, stderr)
	}
	if err := json.Unmarshal([]byte(stdout), &r); err != nil || r.Rerun != 0 || len(r.Blacklisted) != 0 {
		t.Errorf("second run: %v %+v: want no re-run and nobody newly blacklisted", err, r)
	}
	for _, o := range r.Results {
		for _, h := range o.Hosts {
			if h == "local02" {
				t.Errorf("job %s accepted from the blacklisted host", o.Job)
			}
		}
	}
}

func TestRunReportsJobsWithoutMajority(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "jobs"), []byte("job r sh -c 'echo $PVC_HOST'\n"), 0o644)
	code, stdout, stderr := runMain("run", "--local-hosts", "5", "--spot-every", "0", "--state", filepath.Join(dir, "s"),
		"--out", "", filepath.Join(dir, "jobs"))
	if code != cli.ExitFailure || !strings.Contains(stdout, "r: no-majority") || !strings.Contains(stderr, "1 of 1 jobs not accepted") {
		t.Fatalf("exit %d\n%s\n%s: want exit 1 and the job reported without majority", code, stdout, stderr)
	}
}
