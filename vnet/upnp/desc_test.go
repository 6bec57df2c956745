package upnp

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDescription(t *testing.T) {
	for _, tc := range []struct{ cluster, peer, want string }{
		{"lab", "h1", "pvc lab h1"},
		{"grid", "node-17.eu", "pvc grid node-17.eu"},
		{"my cluster", "h\t1", "pvc my_cluster h_1"},
		{"", "", "pvc _ _"},
	} {
		d := Description(tc.cluster, tc.peer)
		if d != tc.want {
			t.Errorf("Description(%q, %q) = %q, want %q", tc.cluster, tc.peer, d, tc.want)
		}
		c, p, ok := ParseDescription(d)
		if !ok || Description(c, p) != d {
			t.Errorf("ParseDescription(%q) = %q, %q, %v", d, c, p, ok)
		}
	}
}

func TestDescriptionLong(t *testing.T) {
	long := strings.Repeat("é", 40)
	a, b := Description("lab", long+"a"), Description("lab", long+"b")
	if len(a) > MaxDescription || len(b) > MaxDescription || !utf8.ValidString(a) {
		t.Fatalf("too long or invalid: %q (%d)", a, len(a))
	}
	if a == b {
		t.Errorf("two long names share description %q", a)
	}
	if a != Description("lab", long+"a") {
		t.Error("long description not stable")
	}
	if c, _, ok := ParseDescription(a); !ok || c != "lab" {
		t.Errorf("ParseDescription(%q) = %q, %v", a, c, ok)
	}
}

func TestParseDescriptionOthers(t *testing.T) {
	for _, d := range []string{"", "pvc-lab probe", "pvc lab", "pvc lab h1 extra", "PVC lab h1", "miniupnpd", "pvc  h1"} {
		if c, p, ok := ParseDescription(d); ok {
			t.Errorf("ParseDescription(%q) = %q, %q, true", d, c, p)
		}
	}
}

func FuzzParseDescription(f *testing.F) {
	f.Add("pvc lab h1")
	f.Add("pvc-lab probe")
	f.Add("pvc my_cluster h_1")
	f.Fuzz(func(t *testing.T, d string) {
		c, p, ok := ParseDescription(d)
		if !ok {
			return
		}
		if c == "" || p == "" || strings.Contains(c+p, " ") {
			t.Fatalf("%q parses to %q %q", d, c, p)
		}
		// What Description writes from clean names it reads back.
		if clean(c) == c && clean(p) == p && len(d) <= MaxDescription && Description(c, p) != d {
			t.Errorf("%q parses to %q %q which describe as %q", d, c, p, Description(c, p))
		}
	})
}
