package vcluster

import (
	"os"
	"testing"
	"time"

	"github.com/pvc-project/pvc/e2e/netlab"
)

// NewT is New for a test: the cluster's files go to a directory of its
// own, and at the end of the test every pvcd and broker of the cluster is stopped
// (SIGTERM, as `pvcd down`) before that directory is removed, and both
// before the lab is torn down. (A t.TempDir made after the lab would be
// removed while the daemons still run from it.)
func NewT(tb testing.TB, lab *netlab.Lab, name, bin string) *Cluster {
	tb.Helper()
	dir, err := os.MkdirTemp("", "pvc-cluster-")
	if err != nil {
		tb.Fatal(err)
	}
	c := New(lab, name, bin, dir)
	tb.Cleanup(func() {
		c.StopAll(5 * time.Second)
		os.RemoveAll(dir)
	})
	return c
}

// StopAll stops every pvcd of the cluster, then its brokers, each given
// grace to exit.
func (c *Cluster) StopAll(grace time.Duration) {
	for _, n := range c.Nodes {
		if n.Proc != nil {
			_ = n.Proc.Stop(grace)
		}
	}
	for _, p := range c.brokerProcs {
		_ = p.Stop(grace)
	}
}
