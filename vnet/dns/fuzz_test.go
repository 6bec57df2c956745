package dns

import (
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzHandler feeds the handler with whatever miekg/dns unpacks from
// arbitrary bytes, as the server would: it must never panic, answer at
// most once, and its reply must pack.
func FuzzHandler(f *testing.F) {
	for _, q := range []*mdns.Msg{
		query("node1.mycluster.pvc.", mdns.TypeA),
		query("1.0.1.240.in-addr.arpa.", mdns.TypePTR),
		query("nobody.mycluster.pvc.", mdns.TypeAAAA),
		query("example.com.", mdns.TypeA),
		query(`a\.b.mycluster.pvc.`, mdns.TypeA),
		query("0.1.240.in-addr.arpa.", mdns.TypeANY),
	} {
		q.SetEdns0(1232, false)
		b, err := q.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	h := testHandler(f, testDir(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := new(mdns.Msg)
		if err := r.Unpack(b); err != nil {
			return
		}
		w := &recorder{t: t}
		h.ServeDNS(w, r)
		if len(w.msgs) > 1 {
			t.Fatalf("%d replies", len(w.msgs))
		}
		if r.Response && len(w.msgs) != 0 {
			t.Fatal("answered a response")
		}
		if len(w.msgs) == 1 && w.msgs[0].Id != r.Id {
			t.Fatalf("reply id %d, query id %d", w.msgs[0].Id, r.Id)
		}
	})
}
