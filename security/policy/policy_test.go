package policy

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/pvc-project/pvc/security/internal/sectest"
)

const globalSrc = `# the lab's global policy
default deny

deny  from peer:evil   to any                                  # line 4
allow from group:workers to group:head proto tcp port 6817-6819 # slurmd -> slurmctld
allow from group:head  to group:workers proto tcp port 6818
allow from any         to any        proto icmp
allow from any         to group:web  proto any port 80, 443
allow from group:admin to any
`

func parseGlobal(t testing.TB) *Global {
	g, err := ParseGlobal([]byte(globalSrc))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func signedGlobal(t testing.TB, version uint64) *Global {
	g := parseGlobal(t)
	g.Cluster, g.Version = "lab", version
	if err := g.Sign(sectest.Key(1)); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestParseGlobal(t *testing.T) {
	g := parseGlobal(t)
	if g.Default != Deny || len(g.Rules) != 6 {
		t.Fatalf("default %v, %d rules", g.Default, len(g.Rules))
	}
	r := g.Rules[1]
	if r.Line != 5 || r.Action != Allow || r.From != (Selector{SelGroup, "workers"}) || r.To != (Selector{SelGroup, "head"}) ||
		r.Proto != ProtoTCP || len(r.Ports) != 1 || r.Ports[0] != (PortRange{6817, 6819}) {
		t.Errorf("rule 2 = %+v", r)
	}
	if got := g.Rules[4].String(); got != "allow from any to group:web port 80,443" {
		t.Errorf("rule 5 prints %q", got)
	}
	// The text form parses back to the same rules.
	h, err := ParseGlobal([]byte(g.Text()))
	if err != nil {
		t.Fatal(err)
	}
	if h.Text() != g.Text() {
		t.Errorf("text round trip:\n%s\nvs\n%s", h.Text(), g.Text())
	}
}

func TestParseGlobalErrorsNameTheLine(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"allow from any to any\n", "no \"default allow\""},
		{"default deny\ndefault allow\n", "line 2: policy syntax error: second default line"},
		{"default maybe\n", "line 1: policy syntax error: unknown action \"maybe\""},
		{"default deny\n\n# c\npermit from any to any\n", "line 4: policy syntax error: unknown statement \"permit\""},
		{"default deny\nallow from grp:x to any\n", "line 2: policy syntax error: unknown selector \"grp:x\""},
		{"default deny\nallow from group:Bad to any\n", "line 2:"},
		{"default deny\nallow to any from any\n", "line 2: policy syntax error: want"},
		{"default deny\nallow from any to any proto sctp\n", "line 2: policy syntax error: unknown protocol \"sctp\""},
		{"default deny\nallow from any to any proto icmp port 1\n", "line 2: policy syntax error: icmp has no ports"},
		{"default deny\nallow from any to any port 0\n", "line 2: policy syntax error: bad port \"0\""},
		{"default deny\nallow from any to any port 70000\n", "bad port \"70000\""},
		{"default deny\nallow from any to any port 9-3\n", "line 2: policy syntax error: port range \"9-3\" is backwards"},
		{"default deny\nallow from any to any port\n", "port needs a list"},
		{"default deny\nallow from any to any proto tcp extra\n", "unexpected \"extra\""},
	} {
		_, err := ParseGlobal([]byte(tc.src))
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseGlobal(%q) = %v, want ErrSyntax and %q", tc.src, err, tc.want)
		}
	}
}

func TestGlobalBinary(t *testing.T) {
	g := signedGlobal(t, 2)
	got, err := Decode(g.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Encode(), g.Encode()) || got.Text() != g.Text() {
		t.Error("round trip differs")
	}
	if err := got.Verify(sectest.Pub(1), "lab"); err != nil {
		t.Error(err)
	}
	if err := got.Verify(sectest.Pub(2), "lab"); !errors.Is(err, ErrWrongSigner) {
		t.Errorf("other master: %v", err)
	}
	if err := got.Verify(sectest.Pub(1), "x"); !errors.Is(err, ErrOtherCluster) {
		t.Errorf("other cluster: %v", err)
	}
	if err := Newer(signedGlobal(t, 3), got); !errors.Is(err, ErrRollback) {
		t.Errorf("v2 after v3: %v, want ErrRollback", err)
	}
	if err := Newer(got, got); !errors.Is(err, ErrRollback) {
		t.Errorf("v2 after v2: %v, want ErrRollback", err)
	}
}

func TestGlobalBitFlips(t *testing.T) {
	sectest.FlipEachBit(t, signedGlobal(t, 2).Encode(), func(b []byte) error {
		x, err := Decode(b)
		if err != nil {
			return err
		}
		return x.Verify(sectest.Pub(1), "lab")
	})
}

const localSrc = `# site A: only the lab network is "inside"
domain 192.0.2.0/24, 198.51.100.0/24
domain 2001:db8::/32
outside inbound deny
outside outbound allow
inbound tcp 22, 6817-6819
inbound icmp
upnp deny
`

func TestParseLocal(t *testing.T) {
	l, err := ParseLocal([]byte(localSrc))
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Domain) != 3 || l.OutsideInbound != Deny || l.OutsideOutbound != Allow || !l.RestrictInbound || len(l.Inbound) != 2 || l.UPnP != Deny {
		t.Errorf("parsed %+v", l)
	}
	if l.Inbound[0].Line != 6 || l.Inbound[0].Proto != ProtoTCP || len(l.Inbound[0].Ports) != 2 {
		t.Errorf("inbound tcp line: %+v", l.Inbound[0])
	}
	m, err := ParseLocal([]byte(l.Text()))
	if err != nil || m.Text() != l.Text() {
		t.Errorf("text round trip: %v\n%s\nvs\n%s", err, m.Text(), l.Text())
	}
	empty, err := ParseLocal([]byte("# nothing\n"))
	if err != nil || empty.OutsideInbound != Allow || empty.OutsideOutbound != Allow || empty.RestrictInbound || empty.UPnP != Allow {
		t.Errorf("empty local policy %+v, %v; want allow everything", empty, err)
	}
	for _, tc := range []struct{ src, want string }{
		{"domain\n", "line 1: policy syntax error: domain needs"},
		{"domain 198.18.0.0/33\n", "line 1: policy syntax error: domain network \"198.18.0.0/33\""},
		{"domain 198.18.0.1/15\n", "host bits set"},
		{"outside inbound\n", "line 1: policy syntax error: want \"outside"},
		{"outside sideways allow\n", "want \"outside"},
		{"outside inbound allow\noutside inbound deny\n", "line 2: policy syntax error: second \"outside inbound\""},
		{"\ninbound tcp\n", "line 2: policy syntax error: inbound tcp needs ports"},
		{"inbound sctp 1\n", "unknown protocol \"sctp\""},
		{"inbound none 22\n", "unexpected \"22\""},
		{"inbound udp 0\n", "bad port \"0\""},
		{"firewall off\n", "line 1: policy syntax error: unknown statement \"firewall\""},
		{"upnp\n", "want \"upnp allow|deny\""},
		{"upnp maybe\n", "maybe"},
		{"upnp deny\nupnp allow\n", "line 2: policy syntax error: second \"upnp\""},
	} {
		_, err := ParseLocal([]byte(tc.src))
		if !errors.Is(err, ErrSyntax) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseLocal(%q) = %v, want %q", tc.src, err, tc.want)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(signedGlobal(f, 1).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := Decode(b)
		if err != nil {
			return
		}
		if !bytes.Equal(g.Encode(), b) {
			t.Fatal("re-encoding differs")
		}
		if _, err := NewEngine(g, nil, Identity{Name: "a"}); err != nil {
			t.Fatalf("decoded policy does not compile: %v", err)
		}
	})
}

func FuzzParseGlobal(f *testing.F) {
	f.Add(globalSrc)
	f.Add("default allow\nallow from any to any port 1-2,3\n")
	f.Fuzz(func(t *testing.T, src string) {
		g, err := ParseGlobal([]byte(src))
		if err != nil {
			return
		}
		// The canonical text parses back to itself, and signs.
		h, err := ParseGlobal([]byte(g.Text()))
		if err != nil || h.Text() != g.Text() {
			t.Fatalf("text round trip: %v", err)
		}
		g.Cluster = "lab"
		if err := g.Sign(sectest.Key(1)); err != nil {
			t.Fatalf("parsed policy does not sign: %v", err)
		}
	})
}

func FuzzParseLocal(f *testing.F) {
	f.Add(localSrc)
	f.Add("inbound none\n")
	f.Fuzz(func(t *testing.T, src string) {
		l, err := ParseLocal([]byte(src))
		if err != nil {
			return
		}
		m, err := ParseLocal([]byte(l.Text()))
		if err != nil || m.Text() != l.Text() {
			t.Fatalf("text round trip: %v", err)
		}
	})
}
