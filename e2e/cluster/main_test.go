// Package cluster tests PVC end to end with the real binaries in the
// network lab: pvc-broker on the Internet, the master's pvcd and enrolled
// peers behind real NATs and firewalls.
package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/pvc-project/pvc/e2e/netlab"
	"github.com/pvc-project/pvc/e2e/vcluster"
)

var bin string // directory of the freshly built binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pvc-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	for pkg, out := range map[string]string{"pvcd": "pvcd", "broker": "pvc-broker"} {
		cmd := exec.Command(goTool, "build", "-o", filepath.Join(dir, out), "github.com/pvc-project/pvc/"+pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, b)
			os.Exit(1)
		}
	}
	bin = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newCluster builds the lab and a cluster "lab" with one broker on b1.
func newCluster(t *testing.T, spec netlab.Spec) *vcluster.Cluster {
	t.Helper()
	l := netlab.New(t, spec)
	c := vcluster.New(l, "lab", bin, t.TempDir())
	if err := c.StartBroker(l.Internet("b1")); err != nil {
		t.Fatal(err)
	}
	if err := c.Init(); err != nil {
		t.Fatal(err)
	}
	return c
}

func up(t *testing.T, c *vcluster.Cluster, h *netlab.Host, name string, extra ...string) *vcluster.Node {
	t.Helper()
	n, err := c.Up(h, name, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
