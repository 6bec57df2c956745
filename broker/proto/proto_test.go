package proto

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"io"
	"reflect"
	"testing"
)

func samples() []Message {
	sig := bytes.Repeat([]byte{7}, 64)
	return []Message{
		&Hello{Version: Version, Role: RolePeer, Cluster: "lab"},
		&Challenge{Nonce: [32]byte{1, 2}, Observed: "192.0.2.1:4000"},
		&Auth{Credential: []byte("cert"), Sig: sig},
		&Auth{Credential: []byte{}, Sig: []byte{}},
		&Welcome{Session: 9, Time: -5},
		&Error{Code: CodeRefused, Text: "revoked"},
		&Publish{Req: 3, Object: []byte("obj")},
		&Ack{Req: 3, Kind: 1, Subject: "a", Version: 7, Err: ""},
		&Lookup{Req: 4, By: LookupIP, Key: "240.1.0.2"},
		&Object{Req: 4, Object: []byte("o")},
		&Subscribe{},
		&Objects{Objects: [][]byte{[]byte("a"), {}}},
		&Signal{Cluster: "lab", From: "a", To: "b", ID: [16]byte{1}, Kind: SignalICE, Payload: []byte("x"), Sig: sig},
		&Relay{Cluster: "lab", From: "a", To: "b", Data: []byte("wg")},
		&Enroll{Request: []byte("req")},
		&EnrollForward{ID: 1 << 60, Request: []byte("req")},
		&EnrollResult{ID: 2, Cert: []byte{}, Err: "token used up"},
		&Ping{Nonce: 1}, &Pong{Nonce: 1},
		&Inventory{Entries: []InvEntry{{Cluster: "lab", Kind: 1, Subject: "a", Version: 2}}},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range samples() {
		var buf bytes.Buffer
		if err := WriteMessage(&buf, m); err != nil {
			t.Fatalf("%s: %v", m.Type(), err)
		}
		got, err := ReadMessage(&buf)
		if err != nil {
			t.Fatalf("%s: %v", m.Type(), err)
		}
		if !bytes.Equal(Marshal(got), Marshal(m)) || got.Type() != m.Type() {
			t.Errorf("%s: got %+v, want %+v", m.Type(), got, m)
		}
	}
}

func TestStrict(t *testing.T) {
	for _, m := range samples() {
		p := Marshal(m)
		if _, err := Unmarshal(m.Type(), append(p, 0)); !errors.Is(err, ErrFormat) {
			t.Errorf("%s with a trailing byte: got %v, want ErrFormat", m.Type(), err)
		}
		if len(p) > 0 {
			if _, err := Unmarshal(m.Type(), p[:len(p)-1]); !errors.Is(err, ErrFormat) {
				t.Errorf("%s truncated: got %v, want ErrFormat", m.Type(), err)
			}
		}
	}
	if _, err := Unmarshal(99, nil); !errors.Is(err, ErrType) {
		t.Errorf("unknown type: got %v", err)
	}
	if _, err := Unmarshal(TypeLookup, Marshal(&Lookup{By: 3})); !errors.Is(err, ErrFormat) {
		t.Errorf("lookup by 3: got %v", err)
	}
	if _, err := Unmarshal(TypeAuth, Marshal(&Auth{Sig: []byte{1}})); !errors.Is(err, ErrFormat) {
		t.Errorf("1-byte signature: got %v", err)
	}
}

func TestFrameLimits(t *testing.T) {
	hdr := []byte{byte(TypeRelay), 0xff, 0xff, 0xff, 0xff}
	if _, _, err := ReadFrame(bytes.NewReader(hdr)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("huge frame: got %v, want ErrTooLarge", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{1, 0, 0, 0, 5, 1})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short frame: got %v", err)
	}
	if _, err := Frame(&Objects{Objects: [][]byte{make([]byte, MaxPayload)}}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized message: got %v", err)
	}
}

func TestSignalSignature(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	s := &Signal{Cluster: "lab", From: "a", To: "b", Kind: SignalOffer, Payload: []byte("hi")}
	SignSignal(s, priv)
	if !VerifySignal(s, pub) {
		t.Fatal("valid signal does not verify")
	}
	for _, mut := range []func(*Signal){
		func(s *Signal) { s.From = "c" }, func(s *Signal) { s.To = "c" }, func(s *Signal) { s.ID[0] ^= 1 },
		func(s *Signal) { s.Payload = []byte("ho") }, func(s *Signal) { s.Cluster = "x" }, func(s *Signal) { s.Kind++ },
	} {
		c := *s
		mut(&c)
		if VerifySignal(&c, pub) {
			t.Errorf("altered signal %+v verifies", c)
		}
	}
	if reflect.DeepEqual(AuthMessage(RolePeer, "a", nil, nil, nil), AuthMessage(RoleMaster, "a", nil, nil, nil)) {
		t.Error("auth message does not depend on the role")
	}
}

// FuzzUnmarshal covers the decoder of every message type: whatever decodes
// must encode back to the same bytes.
func FuzzUnmarshal(f *testing.F) {
	for _, m := range samples() {
		f.Add(uint8(m.Type()), Marshal(m))
	}
	f.Fuzz(func(t *testing.T, typ uint8, p []byte) {
		m, err := Unmarshal(Type(typ), p)
		if err != nil {
			return
		}
		if got := Marshal(m); !bytes.Equal(got, p) {
			t.Fatalf("%s: round trip %x, want %x", m.Type(), got, p)
		}
	})
}

// FuzzUnmarshalObjectsBorrowed: the borrowing decoder of Objects payloads
// accepts exactly what Unmarshal accepts, with the same objects, which
// alias the payload.
func FuzzUnmarshalObjectsBorrowed(f *testing.F) {
	for _, m := range samples() {
		if m.Type() == TypeObjects {
			f.Add(Marshal(m))
		}
	}
	f.Add(Marshal(&Objects{}))
	f.Add(Marshal(&Objects{Objects: [][]byte{{}, {1}, bytes.Repeat([]byte{2}, 300)}}))
	f.Fuzz(func(t *testing.T, p []byte) {
		objs, err := UnmarshalObjectsBorrowed(nil, p)
		m, uerr := Unmarshal(TypeObjects, p)
		if (err == nil) != (uerr == nil) {
			t.Fatalf("borrowed decoder: %v; Unmarshal: %v", err, uerr)
		}
		if err != nil {
			return
		}
		want := m.(*Objects).Objects
		if len(objs) != len(want) {
			t.Fatalf("%d objects, Unmarshal %d", len(objs), len(want))
		}
		for i := range objs {
			if !bytes.Equal(objs[i], want[i]) {
				t.Fatalf("object %d: %x, Unmarshal %x", i, objs[i], want[i])
			}
		}
		if got := Marshal(&Objects{Objects: objs}); !bytes.Equal(got, p) {
			t.Fatalf("round trip %x, want %x", got, p)
		}
		if got, want := AppendObjectsFrame([]byte{9}, objs), AppendFrame([]byte{9}, m); !bytes.Equal(got, want) {
			t.Fatalf("AppendObjectsFrame %x, AppendFrame %x", got, want)
		}
		// They alias the payload.
		for i, o := range objs {
			if len(o) > 0 {
				o[0] ^= 0xff
				if bytes.Equal(o, want[i]) {
					t.Fatalf("object %d does not alias the payload", i)
				}
				o[0] ^= 0xff
			}
		}
	})
}

// FuzzReadFrame feeds raw streams to the frame reader and decoder.
func FuzzReadFrame(f *testing.F) {
	for _, m := range samples() {
		b, _ := Frame(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, raw, rb := bytes.NewReader(b), bytes.NewReader(b), bytes.NewReader(b)
		buf := make([]byte, 64)
		var kept []Message // decoded from the reused buffer: must not change
		var want [][]byte
		defer func() {
			for i, m := range kept {
				if f, _ := Frame(m); !bytes.Equal(f, want[i]) {
					t.Fatalf("message %d changed when the read buffer was reused", i)
				}
			}
		}()
		for {
			m, err := ReadMessage(r)
			// ReadFrameBuf with one reused buffer reads the same messages.
			if bt, bp, berr := ReadFrameBuf(rb, buf); berr == nil {
				if bm, uerr := Unmarshal(bt, bp); uerr == nil {
					f, _ := Frame(bm)
					kept, want = append(kept, bm), append(want, f)
				}
			}
			// ReadRawFrame reads the same frames, whole.
			rf, rerr := ReadRawFrame(raw)
			if (err == nil) != (rerr == nil) {
				if rerr != nil || func() bool { _, e := Unmarshal(Type(rf[0]), rf[HeaderSize:]); return e == nil }() {
					t.Fatalf("ReadMessage: %v; ReadRawFrame: %v", err, rerr)
				}
			}
			if err != nil {
				return
			}
			if m2, err := Unmarshal(Type(rf[0]), rf[HeaderSize:]); err != nil || m2.Type() != m.Type() {
				t.Fatalf("raw frame decodes to %v (%v), want a %s", m2, err, m.Type())
			}
			fr, err := Frame(m)
			if err != nil {
				t.Fatal(err)
			}
			if len(fr) > len(b) {
				t.Fatalf("re-encoded frame longer than input")
			}
		}
	})
}

// FuzzParseUDPRelay: whatever parses encodes back to the same bytes.
func FuzzParseUDPRelay(f *testing.F) {
	f.Add((&UDPRelay{Token: [16]byte{1}, Name: "b", Data: []byte("wg")}).Append(nil))
	f.Add((&UDPRelay{}).Append(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := ParseUDPRelay(b)
		if err != nil {
			return
		}
		if got := u.Append(nil); !bytes.Equal(got, b) {
			t.Fatalf("round trip %x, want %x", got, b)
		}
	})
}

func TestUDPRelay(t *testing.T) {
	u := &UDPRelay{Token: [16]byte{7}, Name: "node-1", Data: []byte{1, 2, 3}}
	got, err := ParseUDPRelay(u.Append(nil))
	if err != nil || !reflect.DeepEqual(got, u) {
		t.Fatalf("got %+v, %v", got, err)
	}
	for _, b := range [][]byte{nil, []byte("PVC"), []byte("PVCRshort"), append([]byte("XXXX"), make([]byte, 20)...)} {
		if _, err := ParseUDPRelay(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%q: got %v", b, err)
		}
	}
}
