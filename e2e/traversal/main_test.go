// Package traversal tests PVC's NAT and firewall traversal end to end with
// the real binaries in the network lab: every ordered pair of site kinds,
// and each technique on its own.
package traversal

import (
	"testing"

	"github.com/pvc-project/pvc/e2e/vcluster"
)

var bin string // directory of the freshly built binaries

func TestMain(m *testing.M) { vcluster.Main(m, &bin) }
