// Package wire holds the small deterministic binary encoder and strict
// decoder that every signed object of the security module uses: big-endian
// fixed-width integers and length-prefixed byte strings, with caps on every
// length and no trailing bytes allowed.
//
// The encoding is canonical: for every value there is exactly one byte
// string, so decode-then-encode gives back the input byte for byte.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrShort is returned when the input ends before a field does.
var ErrShort = errors.New("truncated input")

// ErrTrailing is returned when bytes follow the last field.
var ErrTrailing = errors.New("trailing bytes")

// ErrTooLong is returned when a length prefix exceeds its cap.
var ErrTooLong = errors.New("field too long")

// Writer appends fields to a byte slice.
type Writer struct{ B []byte }

// U8 appends one byte.
func (w *Writer) U8(v uint8) { w.B = append(w.B, v) }

// U16 appends a big-endian uint16.
func (w *Writer) U16(v uint16) { w.B = binary.BigEndian.AppendUint16(w.B, v) }

// U32 appends a big-endian uint32.
func (w *Writer) U32(v uint32) { w.B = binary.BigEndian.AppendUint32(w.B, v) }

// U64 appends a big-endian uint64.
func (w *Writer) U64(v uint64) { w.B = binary.BigEndian.AppendUint64(w.B, v) }

// I64 appends a big-endian int64 (two's complement).
func (w *Writer) I64(v int64) { w.U64(uint64(v)) }

// Raw appends b as is (fixed-size fields).
func (w *Writer) Raw(b []byte) { w.B = append(w.B, b...) }

// Bytes8 appends b with a one-byte length prefix; b must be at most 255 bytes.
func (w *Writer) Bytes8(b []byte) {
	if len(b) > 255 {
		panic("wire: Bytes8 longer than 255")
	}
	w.U8(uint8(len(b)))
	w.Raw(b)
}

// String8 appends s with a one-byte length prefix.
func (w *Writer) String8(s string) { w.Bytes8([]byte(s)) }

// Bytes32 appends b with a four-byte length prefix.
func (w *Writer) Bytes32(b []byte) {
	w.U32(uint32(len(b)))
	w.Raw(b)
}

// Reader consumes fields from a byte slice. The first error sticks: later
// reads return zero values, and Err (or Done) reports it.
type Reader struct {
	b   []byte
	err error
}

// NewReader returns a Reader over b.
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Err returns the first error met, or nil.
func (r *Reader) Err() error { return r.err }

// Len returns the number of bytes not yet read.
func (r *Reader) Len() int { return len(r.b) }

// Fail records err as the reader's error unless one is already recorded.
func (r *Reader) Fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Done returns the first error, or ErrTrailing if bytes remain.
func (r *Reader) Done() error {
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return fmt.Errorf("%w (%d)", ErrTrailing, len(r.b))
	}
	return nil
}

func (r *Reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = ErrShort
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// U8 reads one byte.
func (r *Reader) U8() uint8 {
	b := r.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

// U16 reads a big-endian uint16.
func (r *Reader) U16() uint16 {
	b := r.take(2)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint16(b)
}

// U32 reads a big-endian uint32.
func (r *Reader) U32() uint32 {
	b := r.take(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

// U64 reads a big-endian uint64.
func (r *Reader) U64() uint64 {
	b := r.take(8)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

// I64 reads a big-endian int64.
func (r *Reader) I64() int64 { return int64(r.U64()) }

// Raw reads n bytes. The result aliases the input.
func (r *Reader) Raw(n int) []byte { return r.take(n) }

// Bytes8 reads a byte string with a one-byte length prefix, at most max bytes.
func (r *Reader) Bytes8(max int) []byte {
	n := int(r.U8())
	if r.err == nil && n > max {
		r.err = fmt.Errorf("%w: %d > %d", ErrTooLong, n, max)
	}
	return r.take(n)
}

// String8 reads a string with a one-byte length prefix, at most max bytes.
func (r *Reader) String8(max int) string { return string(r.Bytes8(max)) }

// Bytes32 reads a byte string with a four-byte length prefix, at most max
// bytes. The result aliases the input.
func (r *Reader) Bytes32(max int) []byte {
	n := r.U32()
	if r.err == nil && uint64(n) > uint64(max) {
		r.err = fmt.Errorf("%w: %d > %d", ErrTooLong, n, max)
	}
	return r.take(int(n))
}
