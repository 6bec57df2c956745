package wire

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var w Writer
	w.U8(1)
	w.U16(0x0203)
	w.U32(0x04050607)
	w.U64(0x08090a0b0c0d0e0f)
	w.I64(-2)
	w.String8("abc")
	w.Bytes32([]byte{9, 9})
	w.Raw([]byte{7})
	r := NewReader(w.B)
	if r.U8() != 1 || r.U16() != 0x0203 || r.U32() != 0x04050607 || r.U64() != 0x08090a0b0c0d0e0f || r.I64() != -2 ||
		r.String8(3) != "abc" || !bytes.Equal(r.Bytes32(2), []byte{9, 9}) || !bytes.Equal(r.Raw(1), []byte{7}) {
		t.Fatal("values differ")
	}
	if err := r.Done(); err != nil {
		t.Fatal(err)
	}
}

func TestStrict(t *testing.T) {
	r := NewReader([]byte{1, 2})
	r.U8()
	if err := r.Done(); !errors.Is(err, ErrTrailing) {
		t.Errorf("trailing: %v", err)
	}
	r = NewReader([]byte{0, 0, 0})
	if r.U32(); !errors.Is(r.Done(), ErrShort) {
		t.Errorf("short: %v", r.Done())
	}
	r = NewReader([]byte{5, 'a', 'b', 'c', 'd', 'e'})
	if r.String8(4); !errors.Is(r.Done(), ErrTooLong) {
		t.Errorf("too long: %v", r.Done())
	}
	r = NewReader([]byte{0xff, 0xff, 0xff, 0xff})
	if r.Bytes32(1 << 30); !errors.Is(r.Done(), ErrTooLong) {
		t.Errorf("huge length: %v", r.Done())
	}
	// The first error sticks; later reads give zero values.
	if r.U64() != 0 || r.Raw(1) != nil {
		t.Error("reads after an error return data")
	}
}
