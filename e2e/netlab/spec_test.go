package netlab

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSpecValidate(t *testing.T) {
	many := make([]string, 91)
	for i := range many {
		many[i] = "h" + itoa(i)
	}
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Internet: []string{"B1"}}, `Internet host name "B1"`},
		{Spec{Internet: []string{"inet"}}, `"inet" is used twice or reserved`},
		{Spec{Internet: []string{"a"}, Sites: []SiteSpec{{Name: "a", Kind: Cone}}}, `"a" is used twice`},
		{Spec{Sites: []SiteSpec{{Name: "toolongname1", Kind: Cone}}}, `site name "toolongname1"`},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: "fullcone"}}}, `unknown kind "fullcone"`},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: Cone, Hosts: -1}}}, "-1 hosts"},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: Cone, Hosts: 201}}}, "201 hosts"},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: Cone, Shape: Shape{Loss: 1}}}}, "loss 1"},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: Cone, Shape: Shape{Delay: -time.Millisecond}}}}, "delay -1ms"},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: Cone, Shape: Shape{Rate: 100}}}}, "rate 100 bit/s"},
		{Spec{Internet: many}, "91 Internet hosts"},
		{Spec{Sites: []SiteSpec{{Name: "x", Kind: Public, Hosts: 155}}}, "need 155 Internet addresses"},
	} {
		err := tc.spec.Validate()
		if !errors.Is(err, ErrBadSpec) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want ErrBadSpec with %q", tc.spec, err, tc.want)
		}
	}
	if err := everyKind().Validate(); err != nil {
		t.Errorf("every kind: %v", err)
	}
}

func TestRouterRules(t *testing.T) {
	lan := lanPrefix(3)
	has := func(t *testing.T, rules string, want ...string) {
		t.Helper()
		for _, w := range want {
			if !strings.Contains(rules, w) {
				t.Errorf("rules lack %q:\n%s", w, rules)
			}
		}
	}
	hasNot := func(t *testing.T, rules string, bad ...string) {
		t.Helper()
		for _, b := range bad {
			if strings.Contains(rules, b) {
				t.Errorf("rules contain %q:\n%s", b, rules)
			}
		}
	}
	cone := routerRules(Cone, false, lan, Shape{})
	has(t, cone, ":FORWARD DROP", "-A POSTROUTING -o wan0 -j MASQUERADE\n", "--ctstate ESTABLISHED,RELATED")
	hasNot(t, cone, "random-fully", "NFQUEUE", "DNAT")
	has(t, routerRules(Symmetric, false, lan, Shape{}), "MASQUERADE --random-fully")
	hasNot(t, routerRules(Firewall, false, lan, Shape{}), "*nat", "MASQUERADE")
	has(t, routerRules(UPnP, false, lan, Shape{}), "--ctstate DNAT -j ACCEPT", "--sport 3478:3479")
	blocked := routerRules(UDPBlocked, true, lan, Shape{})
	if i, j := strings.Index(blocked, "-A FORWARD -p udp -j DROP"), strings.Index(blocked, "-A FORWARD -m conntrack"); i < 0 || i > j {
		t.Errorf("UDP must be dropped before established traffic is accepted:\n%s", blocked)
	}
	has(t, routerRules(Cone, false, lan, Shape{Delay: time.Millisecond}),
		"*raw", "-A PREROUTING -i wan0 -j NFQUEUE --queue-num 1", "-A PREROUTING -i lan0 ! -d 198.18.3.0/24 -j NFQUEUE")
	// iptables-restore syntax: every table ends in COMMIT.
	if strings.Count(cone, "*") != strings.Count(cone, "COMMIT") {
		t.Errorf("unbalanced tables:\n%s", cone)
	}
}

func TestHostRules(t *testing.T) {
	if r := hostRules(Public, false, Shape{}); r != "" {
		t.Errorf("a public host needs no rules, got:\n%s", r)
	}
	fw := hostRules(HostFW, false, Shape{})
	if !strings.Contains(fw, ":INPUT DROP") || !strings.Contains(fw, "ESTABLISHED,RELATED -j ACCEPT") {
		t.Errorf("hostfw:\n%s", fw)
	}
	pub := hostRules(Public, true, Shape{Loss: 0.1})
	for _, w := range []string{":INPUT ACCEPT", "-A OUTPUT -o eth0 -p udp -j DROP", "-A OUTPUT -o eth0 -j NFQUEUE"} {
		if !strings.Contains(pub, w) {
			t.Errorf("public+udp-blocked+loss lacks %q:\n%s", w, pub)
		}
	}
}

func TestTBFBurst(t *testing.T) {
	for _, tc := range []struct {
		rate  uint64
		burst string
	}{{1_000_000, "16384"}, {100_000_000, "50000"}, {1_000_000_000, "500000"}} {
		args := strings.Join(tbfArgs("wan0", tc.rate), " ")
		if !strings.Contains(args, "burst "+tc.burst+" ") {
			t.Errorf("rate %d: %s, want burst %s", tc.rate, args, tc.burst)
		}
	}
}

func TestExpectedTable(t *testing.T) {
	for _, k := range Kinds {
		s := &Site{Spec: SiteSpec{Name: "x", Kind: k}}
		b := Expected(s)
		if b.InboundUDP != (k == Public) || b.InboundTCP != (k == Public) {
			t.Errorf("%s: only public sites accept unsolicited traffic: %+v", k, b)
		}
		if (k == UDPBlocked) != !b.OutboundUDP {
			t.Errorf("%s: outbound UDP %v", k, b.OutboundUDP)
		}
	}
	s := &Site{Spec: SiteSpec{Name: "x", Kind: HostFW, UDPBlocked: true}}
	if Expected(s).OutboundUDP || Expected(s).Mapping != MapUnknown {
		t.Errorf("hostfw + udp-blocked: %+v", Expected(s))
	}
}

func TestParseSeen(t *testing.T) {
	if a, err := parseSeen("seen 203.0.113.5:4000\n"); err != nil || a.String() != "203.0.113.5:4000" {
		t.Errorf("got %v, %v", a, err)
	}
	for _, bad := range []string{"", "seen", "seen x:y", "hello 1.2.3.4:5"} {
		if _, err := parseSeen(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{"100mbit": 100e6, "1gbit": 1e9, "1.5Mbit": 1.5e6, "64kbit": 64e3, "9000": 9000} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("%q: got %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "fast", "-1mbit", "0", "mbit", "2tbit"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
