package ice

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range []*Message{
		{Type: MsgRequest},
		{Type: MsgOffer, Gen: 7, Ufrag: "abcd", Pwd: strings.Repeat("p", 22), Candidates: []string{"candidate:1 1 udp 2130706431 198.18.1.2 40000 typ host"}},
		{Type: MsgAnswer, Gen: 1 << 60, Ufrag: "wxyz", Pwd: strings.Repeat("q", 24)},
	} {
		b, err := m.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip: %+v, want %+v", got, m)
		}
	}
}

func TestMessageBadInput(t *testing.T) {
	good, _ := (&Message{Type: MsgOffer, Ufrag: "abcd", Pwd: strings.Repeat("p", 22)}).Marshal()
	for name, b := range map[string][]byte{
		"empty":       nil,
		"version":     append([]byte{9}, good[1:]...),
		"type":        append([]byte{1, 9}, good[2:]...),
		"trailing":    append(append([]byte(nil), good...), 0),
		"truncated":   good[:len(good)-1],
		"short ufrag": mustMarshal(&Message{Type: MsgOffer, Ufrag: "abcd", Pwd: strings.Repeat("p", 22)}, func(b []byte) []byte { b[10] = 3; return append(b[:11], b[12:]...) }),
	} {
		if _, err := ParseMessage(b); !errors.Is(err, ErrMessage) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	for name, m := range map[string]*Message{
		"request with creds": {Type: MsgRequest, Ufrag: "abcd"},
		"short pwd":          {Type: MsgOffer, Ufrag: "abcd", Pwd: "short"},
		"too many":           {Type: MsgOffer, Ufrag: "abcd", Pwd: strings.Repeat("p", 22), Candidates: make([]string, MaxCandidates+1)},
		"empty candidate":    {Type: MsgAnswer, Ufrag: "abcd", Pwd: strings.Repeat("p", 22), Candidates: []string{""}},
	} {
		if _, err := m.Marshal(); !errors.Is(err, ErrMessage) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func mustMarshal(m *Message, edit func([]byte) []byte) []byte {
	b, err := m.Marshal()
	if err != nil {
		panic(err)
	}
	return edit(b)
}

func FuzzParseMessage(f *testing.F) {
	b, _ := (&Message{Type: MsgOffer, Gen: 3, Ufrag: "abcd", Pwd: strings.Repeat("p", 22), Candidates: []string{"candidate:1 1 udp 1 198.18.1.2 1 typ host"}}).Marshal()
	f.Add(b)
	f.Add([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := ParseMessage(in)
		if err != nil {
			return
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("parsed message does not marshal: %v", err)
		}
		if string(out) != string(in) {
			t.Fatalf("not canonical: %x -> %x", in, out)
		}
	})
}

func TestBackoff(t *testing.T) {
	a := &Agents{cfg: Config{Backoff: 5e9, MaxBackoff: 60e9}}
	for count, want := range map[int]float64{0: 0, 1: 5, 2: 10, 3: 20, 4: 40, 5: 60, 9: 60} {
		if got := a.wait(failure{count: count}).Seconds(); got != want {
			t.Errorf("after %d failures: wait %vs, want %vs", count, got, want)
		}
	}
}
