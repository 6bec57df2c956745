package bind

import (
	"bytes"
	"testing"
)

func TestProbeRoundTrip(t *testing.T) {
	for _, p := range []probe{
		{nonce: 1, from: "a", to: "b"},
		{pong: true, nonce: 1<<64 - 1, from: "node-12", to: "x", sig: bytes.Repeat([]byte{7}, 64)},
	} {
		b, err := p.marshal()
		if err != nil {
			t.Fatal(err)
		}
		q, err := parseProbe(b)
		if err != nil {
			t.Fatal(err)
		}
		if q.pong != p.pong || q.nonce != p.nonce || q.from != p.from || q.to != p.to || !bytes.Equal(q.sig, p.sig) {
			t.Errorf("got %+v, want %+v", q, p)
		}
	}
}

func TestProbeBad(t *testing.T) {
	good, _ := (&probe{nonce: 5, from: "a", to: "b"}).marshal()
	for name, b := range map[string][]byte{
		"empty":          nil,
		"short":          good[:10],
		"trailing":       append(append([]byte(nil), good...), 0),
		"version":        append([]byte("PVCP\x02"), good[5:]...),
		"type":           append([]byte("PVCP\x01\x09"), good[6:]...),
		"truncated name": good[:len(good)-3],
	} {
		if _, err := parseProbe(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := (&probe{from: "", to: "b"}).marshal(); err == nil {
		t.Error("empty from accepted")
	}
}

func FuzzParseProbe(f *testing.F) {
	good, _ := (&probe{nonce: 5, from: "a", to: "b", sig: make([]byte, 64)}).marshal()
	f.Add(good)
	f.Add([]byte("PVCP"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseProbe(b)
		if err != nil {
			return
		}
		out, err := p.marshal()
		if err != nil {
			t.Fatalf("parsed but does not marshal: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("round trip: %x != %x", out, b)
		}
	})
}
