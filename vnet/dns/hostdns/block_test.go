package hostdns

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
)

var hostsA = []Host{
	{"node2", netip.MustParseAddr("240.1.0.2")},
	{"node1", netip.MustParseAddr("240.1.0.1")},
}

const blockA = `# BEGIN pvc alpha (managed by pvcd; do not edit)
240.1.0.1 node1.alpha.pvc node1
240.1.0.2 node2.alpha.pvc node2
# END pvc alpha
`

func TestRenderBlock(t *testing.T) {
	got, err := RenderBlock("alpha", "alpha.pvc.", hostsA)
	if err != nil {
		t.Fatal(err)
	}
	if got != blockA {
		t.Errorf("got:\n%s\nwant:\n%s", got, blockA)
	}
	bad := []struct {
		cluster, domain string
		hosts           []Host
	}{
		{"", "a.pvc", nil},
		{"a b", "a.pvc", nil},
		{"a", "", nil},
		{"a", "a..pvc", nil},
		{"a", "a.pvc", []Host{{"x y", netip.MustParseAddr("240.1.0.1")}}},
		{"a", "a.pvc", []Host{{"x", netip.Addr{}}}},
		{"a", "a.pvc", []Host{{"x", netip.MustParseAddr("240.1.0.1")}, {"x", netip.MustParseAddr("240.1.0.2")}}},
		{"a", "a.pvc", []Host{{"x\n1.2.3.4 evil", netip.MustParseAddr("240.1.0.1")}}},
	}
	for _, b := range bad {
		if _, err := RenderBlock(b.cluster, b.domain, b.hosts); !errors.Is(err, ErrBadHost) {
			t.Errorf("RenderBlock(%q, %q, %v) = %v, want ErrBadHost", b.cluster, b.domain, b.hosts, err)
		}
	}
}

func TestFileSetRemove(t *testing.T) {
	const outsideHead = "127.0.0.1 localhost\n# a comment\n\n"
	const outsideTail = "::1 localhost ip6-localhost\r\n198.18.0.1 nas # END pvc alpha is not a marker here\n"
	const stale = "# BEGIN pvc alpha (managed by pvcd; do not edit)  \r\n240.1.0.9 old.alpha.pvc old\n# END pvc alpha\t\n"
	tests := []struct {
		name     string
		in       string
		want     string // after SetBlock(alpha, hostsA)
		removed  string // after RemoveBlock(alpha) of want
		clusters []string
	}{
		{"empty file", "", blockA, "", nil},
		{"append", outsideHead, outsideHead + blockA, outsideHead, nil},
		{"no final newline", "127.0.0.1 localhost", "127.0.0.1 localhost\n" + blockA, "127.0.0.1 localhost\n", nil},
		{"stale block replaced in place", outsideHead + stale + outsideTail, outsideHead + blockA + outsideTail,
			outsideHead + outsideTail, []string{"alpha"}},
		{"two stale blocks: one stays", stale + outsideHead + stale, blockA + outsideHead, outsideHead, []string{"alpha"}},
		{"stray end marker dropped", outsideHead + "# END pvc alpha\n" + outsideTail, outsideHead + blockA + outsideTail,
			outsideHead + outsideTail, []string{"alpha"}},
		{"other cluster untouched", outsideHead + strings.ReplaceAll(stale, "alpha", "beta"),
			outsideHead + strings.ReplaceAll(stale, "alpha", "beta") + blockA,
			outsideHead + strings.ReplaceAll(stale, "alpha", "beta"), []string{"beta"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if got := string(f.Bytes()); got != tt.in {
				t.Fatalf("Parse+Bytes changed the file:\n%q\nwant:\n%q", got, tt.in)
			}
			if got := f.Clusters(); !reflect.DeepEqual(got, tt.clusters) {
				t.Errorf("Clusters = %v, want %v", got, tt.clusters)
			}
			if err := f.SetBlock("alpha", "alpha.pvc", hostsA); err != nil {
				t.Fatal(err)
			}
			if got := string(f.Bytes()); got != tt.want {
				t.Errorf("after SetBlock:\n%q\nwant:\n%q", got, tt.want)
			}
			hs, ok := f.Block("alpha")
			if !ok || !reflect.DeepEqual(hs, []Host{hostsA[1], hostsA[0]}) {
				t.Errorf("Block = %v, %v", hs, ok)
			}
			if !f.RemoveBlock("alpha") || f.RemoveBlock("alpha") {
				t.Error("RemoveBlock did not report presence")
			}
			if got := string(f.Bytes()); got != tt.removed {
				t.Errorf("after RemoveBlock:\n%q\nwant:\n%q", got, tt.removed)
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	for name, in := range map[string]string{
		"no end":             "x\n# BEGIN pvc alpha (managed by pvcd; do not edit)\n240.1.0.1 a.alpha.pvc a\n",
		"nested begin":       "# BEGIN pvc alpha (managed by pvcd; do not edit)\n# BEGIN pvc beta (managed by pvcd; do not edit)\n# END pvc beta\n# END pvc alpha\n",
		"other end in block": "# BEGIN pvc alpha (managed by pvcd; do not edit)\n# END pvc beta\n# END pvc alpha\n",
	} {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// FuzzParse: whatever the hosts file holds, Parse must not panic; a file
// it accepts must round-trip byte for byte; setting and removing a block
// must keep every other line and parse back.
func FuzzParse(f *testing.F) {
	f.Add([]byte("127.0.0.1 localhost\n" + blockA + "::1 localhost\n"))
	f.Add([]byte(strings.ReplaceAll(blockA, "alpha", "beta") + "# END pvc fz\n"))
	f.Add([]byte("# BEGIN pvc fz (managed by pvcd; do not edit)\r\n# END pvc fz\r\nx"))
	f.Add([]byte("# BEGIN pvc fz (managed by pvcd; do not edit)\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		file, err := Parse(in)
		if err != nil {
			return
		}
		if got := file.Bytes(); string(got) != string(in) {
			t.Fatalf("round trip:\n%q\nwant:\n%q", got, in)
		}
		// others lists the lines outside fz's blocks, each without its
		// newline: SetBlock may end a last line that had none, and
		// dropping a stray marker joins the runs around it.
		others := func(f *File) []string {
			var out []string
			for _, s := range f.segs {
				if s.cluster != "fz" {
					for l := range strings.Lines(s.text) {
						out = append(out, strings.TrimSuffix(l, "\n"))
					}
				}
			}
			return out
		}
		before := others(file)
		hs := []Host{{"a", netip.MustParseAddr("240.9.0.1")}, {"b", netip.MustParseAddr("240.9.0.2")}}
		if err := file.SetBlock("fz", "fz.pvc", hs); err != nil {
			t.Fatal(err)
		}
		again, err := Parse(file.Bytes())
		if err != nil {
			t.Fatalf("our own output does not parse: %v\n%q", err, file.Bytes())
		}
		if got, ok := again.Block("fz"); !ok || !reflect.DeepEqual(got, hs) {
			t.Fatalf("Block after SetBlock = %v, %v", got, ok)
		}
		if got := others(again); !slices.Equal(got, before) {
			t.Fatalf("lines outside the block changed:\n%q\nwant:\n%q", got, before)
		}
		again.RemoveBlock("fz")
		if _, ok := again.Block("fz"); ok {
			t.Fatal("block still there after RemoveBlock")
		}
		if _, err := Parse(again.Bytes()); err != nil {
			t.Fatalf("after RemoveBlock: %v", err)
		}
	})
}
