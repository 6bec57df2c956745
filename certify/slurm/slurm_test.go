package slurm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/certify"
)

// fakeSlurm installs sbatch, squeue, sinfo and scancel scripts that
// imitate Slurm on three nodes: sbatch runs the batch script at once on
// the first node not excluded, squeue reports what ran.
func fakeSlurm(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	scripts := map[string]string{
		"sinfo": "#!/bin/sh\nprintf 'n1\\nn2\\nn2\\nn3\\n'\n",
		"sbatch": `#!/bin/bash
echo "$*" >> "$FAKE_SLURM/sbatch.args"
ex=""
while [ $# -gt 1 ]; do
  case "$1" in --exclude) ex="$2"; shift;; esac
  shift
done
script="$1"
id=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo $id > "$FAKE_SLURM/next"
for n in n1 n2 n3; do
  case ",$ex," in *",$n,"*) continue;; esac
  node=$n; break
done
[ -n "$node" ] || { echo "sbatch: error: Requested node configuration is not available" >&2; exit 1; }
if SLURMD_NODENAME=$node bash "$script"; then st=COMPLETED; else st=FAILED; fi
echo "$id|$st|$node" >> "$FAKE_SLURM/jobs"
echo "$id;pvccert"
`,
		"squeue":  "#!/bin/sh\necho \"$*\" >> \"$FAKE_SLURM/squeue.args\"\ncat \"$FAKE_SLURM/jobs\"\n",
		"scancel": "#!/bin/sh\necho \"$*\" >> \"$FAKE_SLURM/scancel.args\"\n",
	}
	for n, s := range scripts {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return dir
}

func TestRunWithFakeSlurm(t *testing.T) {
	fake := fakeSlurm(t)
	work := t.TempDir()
	s, err := New(Config{WorkDir: work, Env: []string{"FAKE_SLURM=" + fake}, Wrapper: "env WRAPPED=yes", Poll: 10e6})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_SLURM", fake) // for the fake scripts; Env reaches them too
	hosts, err := s.Hosts(context.Background())
	if err != nil || strings.Join(hosts, ",") != "n1,n2,n3" {
		t.Fatalf("hosts %v %v", hosts, err)
	}
	tasks := []certify.Task{
		{ID: "t1", Command: "echo \"it's\" $WRAPPED", Dir: work},
		{ID: "t2", Command: "echo two", Exclude: []string{"n1", "ghost"}},
		{ID: "t3", Command: "echo failing >&2; exit 3", Exclude: []string{"n1", "n2"}},
	}
	res, err := s.Run(context.Background(), tasks)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Host != "n1" || string(res[0].Output) != "it's yes\n" || res[0].Err != nil || res[0].CPU < 0 {
		t.Errorf("t1: %+v: want n1, the wrapper's environment, and the quote intact", res[0])
	}
	if res[1].Host != "n2" || string(res[1].Output) != "two\n" || res[1].Err != nil {
		t.Errorf("t2: %+v: want n2 (n1 excluded)", res[1])
	}
	if res[2].Host != "n3" || res[2].Err == nil || !strings.Contains(res[2].Err.Error(), "FAILED") || !strings.Contains(res[2].Err.Error(), "failing") {
		t.Errorf("t3: %+v: want a failed task on n3 with its stderr", res[2])
	}
	args, _ := os.ReadFile(filepath.Join(fake, "sbatch.args"))
	if !strings.Contains(string(args), "--exclude n1 ") || strings.Contains(string(args), "ghost") || !strings.Contains(string(args), "--exclude n1,n2 ") {
		t.Errorf("sbatch arguments:\n%s\nwant --exclude with the known hosts only", args)
	}
	left, _ := filepath.Glob(filepath.Join(work, "t*"))
	if len(left) != 0 {
		t.Errorf("files left in the work directory: %v", left)
	}
	// All nodes excluded: sbatch refuses, Run reports the scheduler's error.
	if _, err := s.Run(context.Background(), []certify.Task{{ID: "t4", Command: "true", Exclude: []string{"n1", "n2", "n3"}}}); err == nil ||
		!strings.Contains(err.Error(), "not available") {
		t.Errorf("all excluded: err %v", err)
	}
	if _, err := s.Run(context.Background(), []certify.Task{{ID: "../x", Command: "true"}}); err == nil {
		t.Errorf("a task ID with a path in it was accepted")
	}
}

func TestScriptQuotes(t *testing.T) {
	s := &Scheduler{cfg: Config{WorkDir: "/shared/w d"}}
	sc := s.Script(certify.Task{ID: "t9", Command: "echo 'a b' \"$X\"", Dir: "/jobs/o'k"})
	for _, want := range []string{
		`cd '/jobs/o'\''k' || exit 97`,
		`sh -c 'echo '\''a b'\'' "$X"'`,
		`>'/shared/w d/t9.out.tmp'`,
		`mv '/shared/w d/t9.out.tmp' '/shared/w d/t9.out'`,
	} {
		if !strings.Contains(sc, want) {
			t.Errorf("script lacks %q:\n%s", want, sc)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Errorf("New without a work directory: no error")
	}
}
