package dns

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// recorder is a miekg/dns ResponseWriter test double. WriteMsg packs the
// message and keeps what a client would unpack, so a reply that cannot go
// on the wire fails the test.
type recorder struct {
	t    testing.TB
	msgs []*mdns.Msg
}

func (r *recorder) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(240, 1, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(240, 1, 0, 2), Port: 5353} }
func (r *recorder) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		r.t.Fatalf("reply does not pack: %v\n%v", err, m)
	}
	got := new(mdns.Msg)
	if err := got.Unpack(b); err != nil {
		r.t.Fatalf("reply does not unpack: %v", err)
	}
	r.msgs = append(r.msgs, got)
	return nil
}
func (r *recorder) Write(b []byte) (int, error) {
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		r.t.Fatalf("Write of a bad message: %v", err)
	}
	r.msgs = append(r.msgs, m)
	return len(b), nil
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

var testSubnet = netip.MustParsePrefix("240.1.0.0/16")

func testDir(t testing.TB) *MemDirectory {
	t.Helper()
	d := NewMemDirectory()
	err := d.Replace([]Peer{
		{"node1", netip.MustParseAddr("240.1.0.1")},
		{"node2", netip.MustParseAddr("240.1.0.2")},
		{"web-3", netip.MustParseAddr("240.1.3.4")},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func testHandler(t testing.TB, dir Directory) *Handler {
	t.Helper()
	h, err := NewHandler(Config{Domain: "MyCluster.pvc.", Subnet: testSubnet, Directory: dir})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// serve runs one query through h and returns the only reply (nil if none).
func serve(t *testing.T, h *Handler, q *mdns.Msg) *mdns.Msg {
	t.Helper()
	w := &recorder{t: t}
	h.ServeDNS(w, q)
	switch len(w.msgs) {
	case 0:
		return nil
	case 1:
		return w.msgs[0]
	}
	t.Fatalf("%d replies to one query", len(w.msgs))
	return nil
}

func query(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

func rrStrings(rrs []mdns.RR) string {
	var s []string
	for _, rr := range rrs {
		s = append(s, rr.String())
	}
	return strings.Join(s, "\n")
}

func TestHandlerAnswers(t *testing.T) {
	h := testHandler(t, testDir(t))
	const soaFwd = "mycluster.pvc.\t10\tIN\tSOA\tns.mycluster.pvc. hostmaster.mycluster.pvc. 2 3600 600 86400 10"
	const soaRev = "1.240.in-addr.arpa.\t10\tIN\tSOA\tns.mycluster.pvc. hostmaster.mycluster.pvc. 2 3600 600 86400 10"
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		aa     bool
		answer string
		ns     string
	}{
		{"A", "node1.mycluster.pvc.", mdns.TypeA, mdns.RcodeSuccess, true,
			"node1.mycluster.pvc.\t10\tIN\tA\t240.1.0.1", ""},
		{"A with hyphen", "web-3.mycluster.pvc.", mdns.TypeA, mdns.RcodeSuccess, true,
			"web-3.mycluster.pvc.\t10\tIN\tA\t240.1.3.4", ""},
		{"A case folded, owner keeps the query's case (0x20)", "NoDe2.MYcluster.PVC.", mdns.TypeA, mdns.RcodeSuccess, true,
			"NoDe2.MYcluster.PVC.\t10\tIN\tA\t240.1.0.2", ""},
		{"ANY gives the A (RFC 8482)", "node1.mycluster.pvc.", mdns.TypeANY, mdns.RcodeSuccess, true,
			"node1.mycluster.pvc.\t10\tIN\tA\t240.1.0.1", ""},
		{"AAAA of a known name is NODATA", "node1.mycluster.pvc.", mdns.TypeAAAA, mdns.RcodeSuccess, true, "", soaFwd},
		{"MX of a known name is NODATA", "node1.mycluster.pvc.", mdns.TypeMX, mdns.RcodeSuccess, true, "", soaFwd},
		{"unknown name", "nobody.mycluster.pvc.", mdns.TypeA, mdns.RcodeNameError, true, "", soaFwd},
		{"unknown name, AAAA", "nobody.mycluster.pvc.", mdns.TypeAAAA, mdns.RcodeNameError, true, "", soaFwd},
		{"below a peer", "x.node1.mycluster.pvc.", mdns.TypeA, mdns.RcodeNameError, true, "", soaFwd},
		{"escaped label in zone", `a\.b.mycluster.pvc.`, mdns.TypeA, mdns.RcodeNameError, true, "", soaFwd},
		{"escaped dot fakes the suffix", `x\.mycluster.pvc.`, mdns.TypeA, mdns.RcodeRefused, false, "", ""},
		{"apex SOA", "mycluster.pvc.", mdns.TypeSOA, mdns.RcodeSuccess, true, soaFwd, ""},
		{"apex A is NODATA", "MyCluster.pvc.", mdns.TypeA, mdns.RcodeSuccess, true, "", soaFwd},
		{"outside: other domain", "example.com.", mdns.TypeA, mdns.RcodeRefused, false, "", ""},
		{"outside: parent", "pvc.", mdns.TypeSOA, mdns.RcodeRefused, false, "", ""},
		{"outside: other cluster", "node1.othercluster.pvc.", mdns.TypeA, mdns.RcodeRefused, false, "", ""},
		{"outside: suffix without dot", "xmycluster.pvc.", mdns.TypeA, mdns.RcodeRefused, false, "", ""},
		{"outside: root", ".", mdns.TypeNS, mdns.RcodeRefused, false, "", ""},
		{"PTR", "1.0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeSuccess, true,
			"1.0.1.240.in-addr.arpa.\t10\tIN\tPTR\tnode1.mycluster.pvc.", ""},
		{"PTR case folded", "4.3.1.240.IN-ADDR.ARPA.", mdns.TypePTR, mdns.RcodeSuccess, true,
			"4.3.1.240.IN-ADDR.ARPA.\t10\tIN\tPTR\tweb-3.mycluster.pvc.", ""},
		{"PTR unknown address", "9.0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, true, "", soaRev},
		{"A on a known address name is NODATA", "2.0.1.240.in-addr.arpa.", mdns.TypeA, mdns.RcodeSuccess, true, "", soaRev},
		{"reverse empty non-terminal", "0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeSuccess, true, "", soaRev},
		{"reverse apex SOA", "1.240.in-addr.arpa.", mdns.TypeSOA, mdns.RcodeSuccess, true, soaRev, ""},
		{"reverse leading zero", "01.0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, true, "", soaRev},
		{"reverse octet too big", "256.0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, true, "", soaRev},
		{"reverse too many labels", "7.1.0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, true, "", soaRev},
		{"reverse not a number", "x.0.1.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, true, "", soaRev},
		{"reverse other subnet", "1.0.2.240.in-addr.arpa.", mdns.TypePTR, mdns.RcodeRefused, false, "", ""},
		{"reverse private address", "1.0.0.10.in-addr.arpa.", mdns.TypePTR, mdns.RcodeRefused, false, "", ""},
		{"ip6.arpa", "1.0.0.0.ip6.arpa.", mdns.TypePTR, mdns.RcodeRefused, false, "", ""},
		{"AXFR refused", "mycluster.pvc.", mdns.TypeAXFR, mdns.RcodeRefused, false, "", ""},
		{"IXFR refused", "mycluster.pvc.", mdns.TypeIXFR, mdns.RcodeRefused, false, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := query(tt.qname, tt.qtype)
			q.Id = 4242
			got := serve(t, h, q)
			if got == nil {
				t.Fatal("no reply")
			}
			if got.Rcode != tt.rcode {
				t.Errorf("rcode = %s, want %s", mdns.RcodeToString[got.Rcode], mdns.RcodeToString[tt.rcode])
			}
			if got.Authoritative != tt.aa {
				t.Errorf("AA = %v, want %v", got.Authoritative, tt.aa)
			}
			if got.Id != 4242 || !got.Response || got.RecursionAvailable {
				t.Errorf("header: id %d response %v RA %v", got.Id, got.Response, got.RecursionAvailable)
			}
			if len(got.Question) != 1 || got.Question[0] != q.Question[0] {
				t.Errorf("question = %v, want %v", got.Question, q.Question)
			}
			if s := rrStrings(got.Answer); s != tt.answer {
				t.Errorf("answer:\n%s\nwant:\n%s", s, tt.answer)
			}
			if s := rrStrings(got.Ns); s != tt.ns {
				t.Errorf("authority:\n%s\nwant:\n%s", s, tt.ns)
			}
		})
	}
}

func TestHandlerOddQueries(t *testing.T) {
	h := testHandler(t, testDir(t))
	two := query("node1.mycluster.pvc.", mdns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	ch := query("version.bind.", mdns.TypeTXT)
	ch.Question[0].Qclass = mdns.ClassCHAOS
	chIn := query("node1.mycluster.pvc.", mdns.TypeA)
	chIn.Question[0].Qclass = mdns.ClassCHAOS
	anyClass := query("node1.mycluster.pvc.", mdns.TypeA)
	anyClass.Question[0].Qclass = mdns.ClassANY
	notify := query("mycluster.pvc.", mdns.TypeSOA)
	notify.Opcode = mdns.OpcodeUpdate
	resp := query("node1.mycluster.pvc.", mdns.TypeA)
	resp.Response = true
	edns := query("node1.mycluster.pvc.", mdns.TypeA)
	edns.SetEdns0(4096, true)
	edns1 := query("node1.mycluster.pvc.", mdns.TypeA)
	edns1.SetEdns0(4096, false)
	edns1.IsEdns0().SetVersion(1)
	empty := query("", mdns.TypeA)

	tests := []struct {
		name    string
		q       *mdns.Msg
		noReply bool
		rcode   int
		answers int
		edns    bool
	}{
		{"nil message", nil, true, 0, 0, false},
		{"no question", &mdns.Msg{}, false, mdns.RcodeFormatError, 0, false},
		{"two questions", two, false, mdns.RcodeFormatError, 0, false},
		{"class CH", ch, false, mdns.RcodeRefused, 0, false},
		{"class CH for a cluster name", chIn, false, mdns.RcodeRefused, 0, false},
		{"class ANY", anyClass, false, mdns.RcodeSuccess, 1, false},
		{"opcode UPDATE", notify, false, mdns.RcodeNotImplemented, 0, false},
		{"a response is not answered", resp, true, 0, 0, false},
		{"EDNS0 echoed", edns, false, mdns.RcodeSuccess, 1, true},
		{"EDNS version 1", edns1, false, mdns.RcodeBadVers, 0, true},
		{"empty name", empty, false, mdns.RcodeFormatError, 0, false},
		{"name not fully qualified", query("node1.mycluster.pvc", mdns.TypeA), false, mdns.RcodeFormatError, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := serve(t, h, tt.q)
			if tt.noReply {
				if got != nil {
					t.Fatalf("reply %v, want none", got)
				}
				return
			}
			if got == nil {
				t.Fatal("no reply")
			}
			if got.Rcode != tt.rcode || len(got.Answer) != tt.answers {
				t.Errorf("rcode %s, %d answers; want %s, %d", mdns.RcodeToString[got.Rcode], len(got.Answer),
					mdns.RcodeToString[tt.rcode], tt.answers)
			}
			opt := got.IsEdns0()
			if (opt != nil) != tt.edns {
				t.Errorf("OPT in reply: %v, want %v", opt != nil, tt.edns)
			}
			if opt != nil && (opt.UDPSize() != EDNSSize || opt.Do()) {
				t.Errorf("OPT: size %d DO %v; want %d, false", opt.UDPSize(), opt.Do(), EDNSSize)
			}
		})
	}
}

func TestHandlerFollowsDirectory(t *testing.T) {
	d := testDir(t)
	h := testHandler(t, d)
	a := func() int { return serve(t, h, query("node9.mycluster.pvc.", mdns.TypeA)).Rcode }
	if got := a(); got != mdns.RcodeNameError {
		t.Fatalf("before Set: %s", mdns.RcodeToString[got])
	}
	if err := d.Set("Node9", netip.MustParseAddr("240.1.0.9")); err != nil {
		t.Fatal(err)
	}
	if got := a(); got != mdns.RcodeSuccess {
		t.Fatalf("after Set: %s", mdns.RcodeToString[got])
	}
	r := serve(t, h, query("9.0.1.240.in-addr.arpa.", mdns.TypePTR))
	if len(r.Answer) != 1 || r.Answer[0].(*mdns.PTR).Ptr != "node9.mycluster.pvc." {
		t.Fatalf("PTR after Set: %v", r.Answer)
	}
	d.Remove("node9")
	if got := a(); got != mdns.RcodeNameError {
		t.Fatalf("after Remove: %s", mdns.RcodeToString[got])
	}
	soa := serve(t, h, query("node9.mycluster.pvc.", mdns.TypeA)).Ns[0].(*mdns.SOA)
	if soa.Serial != d.Serial() || soa.Serial < 4 {
		t.Errorf("SOA serial %d, directory serial %d", soa.Serial, d.Serial())
	}
}

func TestNewHandlerChecksConfig(t *testing.T) {
	d := NewMemDirectory()
	good := Config{Domain: "c.pvc", Subnet: testSubnet, Directory: d}
	if _, err := NewHandler(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	bad := map[string]func(c *Config){
		"no domain":        func(c *Config) { c.Domain = "" },
		"bad label":        func(c *Config) { c.Domain = "a_b.pvc" },
		"empty label":      func(c *Config) { c.Domain = "a..pvc" },
		"no subnet":        func(c *Config) { c.Subnet = netip.Prefix{} },
		"subnet not 240/4": func(c *Config) { c.Subnet = netip.MustParsePrefix("198.18.0.0/16") },
		"subnet unmasked":  func(c *Config) { c.Subnet = netip.MustParsePrefix("240.1.0.1/16") },
		"subnet too big":   func(c *Config) { c.Subnet = netip.MustParsePrefix("240.0.0.0/4") },
		"subnet IPv6":      func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") },
		"no directory":     func(c *Config) { c.Directory = nil },
		"TTL too small":    func(c *Config) { c.TTL = 1 },
	}
	for name, f := range bad {
		c := good
		f(&c)
		if _, err := NewHandler(c); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestReverseZone(t *testing.T) {
	tests := []struct {
		p    string
		want string
		n    int
	}{
		{"240.0.0.0/8", "240.in-addr.arpa.", 1},
		{"240.16.0.0/12", "240.in-addr.arpa.", 1},
		{"240.1.0.0/16", "1.240.in-addr.arpa.", 2},
		{"241.2.3.0/24", "3.2.241.in-addr.arpa.", 3},
	}
	for _, tt := range tests {
		got, n := ReverseZone(netip.MustParsePrefix(tt.p))
		if got != tt.want || n != tt.n {
			t.Errorf("ReverseZone(%s) = %q, %d; want %q, %d", tt.p, got, n, tt.want, tt.n)
		}
	}
}

// A /12 subnet shares its octet-aligned reverse zone with addresses that
// are not the cluster's: those are refused, not denied.
func TestHandlerUnalignedSubnet(t *testing.T) {
	d := NewMemDirectory()
	if err := d.Set("a", netip.MustParseAddr("240.17.0.1")); err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{Domain: "c.pvc", Subnet: netip.MustParsePrefix("240.16.0.0/12"), Directory: d})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		qname string
		rcode int
		n     int
	}{
		{"1.0.17.240.in-addr.arpa.", mdns.RcodeSuccess, 1},
		{"2.0.17.240.in-addr.arpa.", mdns.RcodeNameError, 0},
		{"17.240.in-addr.arpa.", mdns.RcodeSuccess, 0},
		{"1.0.1.240.in-addr.arpa.", mdns.RcodeRefused, 0},
		{"1.240.in-addr.arpa.", mdns.RcodeRefused, 0},
		{"240.in-addr.arpa.", mdns.RcodeSuccess, 0},
	}
	for _, tt := range tests {
		got := serve(t, h, query(tt.qname, mdns.TypePTR))
		if got.Rcode != tt.rcode || len(got.Answer) != tt.n {
			t.Errorf("%s: %s with %d answers, want %s with %d", tt.qname,
				mdns.RcodeToString[got.Rcode], len(got.Answer), mdns.RcodeToString[tt.rcode], tt.n)
		}
	}
}
