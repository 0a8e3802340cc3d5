// Package msgpackcheck bounds what decoding MessagePack bytes may cost, so
// that bytes from anyone who can write to Redis cannot make a decode run out
// of memory or stack.
//
// A MessagePack decoder trusts the lengths the bytes declare: an array
// header claiming 2^31 elements makes it allocate 2^31 elements before it
// finds that the bytes end, and 2 MiB of arrays nested inside each other
// make it recurse until the stack overflows. Check walks the bytes once,
// without allocating, and refuses them unless
//
//   - every string, binary and extension value has the bytes it declares;
//   - every array of n elements has at least n bytes left after its header,
//     and every map of n entries at least 2n (a value takes at least a byte),
//     so no declared length allocates more than the rest of the input fills;
//   - arrays and maps nest at most MaxDepth deep;
//   - the bytes are a sequence of whole values (the decoder reads the first).
//
// A decoder reading checked bytes then allocates at most the input's length
// times the size of the destination's largest element type, and recurses at
// most MaxDepth levels.
//
// One more guard is needed for github.com/vmihailenco/msgpack/v5, whose map
// decoder, meeting an extension value where a map is expected, skips the
// extension's header and reads a map from its payload: bytes the check saw
// as opaque. Reader, the io.Reader the decoder reads through, refuses that
// read.
package msgpackcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxDepth is how deep arrays and maps may nest: a value whose containers
// are nested more than MaxDepth deep (the outermost counting as 1) is
// refused. Decoding a level takes up to about a kilobyte of stack, so
// MaxDepth keeps a decode's stack near a megabyte.
const MaxDepth = 1000

// ErrInvalid is wrapped by every error Check and Reader.Reset return.
var ErrInvalid = errors.New("msgpack: invalid input")

// Check reports whether b is a sequence of whole MessagePack values whose
// declared lengths fit in b and whose containers nest at most MaxDepth deep.
// It allocates only for values nested more than 32 deep.
func Check(b []byte) error {
	return walk(b, nil)
}

// walk checks b (see Check) and, when ext is not nil, appends to it the
// offset in b of every extension value's payload that is not empty, in
// increasing order.
func walk(b []byte, ext *[]int) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: no value", ErrInvalid)
	}
	// open[k] is how many values the (k+1)-th open container still holds.
	// Only non-empty containers are open.
	var buf [32]uint64
	open := buf[:0]
	i := 0
	for i < len(b) || len(open) > 0 {
		if i >= len(b) {
			return fmt.Errorf("%w: %d values missing at the end", ErrInvalid, open[len(open)-1])
		}
		start, c := i, b[i]
		var size, items uint64
		switch {
		// The one-byte headers first: most values have them.
		case c < 0x80 || c >= 0xe0: // fixint
			i++
		case c < 0x90: // fixmap
			i, items = i+1, 2*uint64(c&0x0f)
		case c < 0xa0: // fixarray
			i, items = i+1, uint64(c&0x0f)
		case c < 0xc0: // fixstr
			i, size = i+1, uint64(c&0x1f)
		default:
			hdr, sz, it, isExt, err := header(b[i:])
			if err != nil {
				return fmt.Errorf("%w: %v at offset %d", ErrInvalid, err, i)
			}
			i, size, items = i+hdr, sz, it
			if isExt && size > 0 && ext != nil {
				*ext = append(*ext, i)
			}
		}
		if left := uint64(len(b) - i); size > left {
			return fmt.Errorf("%w: value at offset %d declares %d bytes, %d left", ErrInvalid, start, size, left)
		} else if items > left {
			what, n := "array of", items
			if c&0xf0 == 0x80 || c == 0xde || c == 0xdf {
				what, n = "map of", items/2
			}
			return fmt.Errorf("%w: %s %d at offset %d, %d bytes left", ErrInvalid, what, n, start, left)
		}
		i += int(size)
		if items > 0 {
			if len(open) == MaxDepth {
				return fmt.Errorf("%w: arrays and maps nested more than %d deep at offset %d", ErrInvalid, MaxDepth, start)
			}
			open = append(open, items)
			continue
		}
		// A value ended: so do the containers it was the last value of.
		for len(open) > 0 {
			open[len(open)-1]--
			if open[len(open)-1] > 0 {
				break
			}
			open = open[:len(open)-1]
		}
	}
	return nil
}

// header reads the header of the value b starts with. It returns the
// header's length (the code, the length bytes, an extension's type, and a
// number's bytes), the bytes of payload that follow it (strings, binaries,
// extensions), the values a container holds (2n for a map of n), and
// whether the value is an extension.
func header(b []byte) (hdr int, size, items uint64, isExt bool, err error) {
	c := b[0]
	switch {
	case c <= 0x7f || c >= 0xe0: // fixint
		return 1, 0, 0, false, nil
	case c <= 0x8f: // fixmap
		return 1, 0, 2 * uint64(c&0x0f), false, nil
	case c <= 0x9f: // fixarray
		return 1, 0, uint64(c & 0x0f), false, nil
	case c <= 0xbf: // fixstr
		return 1, uint64(c & 0x1f), 0, false, nil
	case c == 0xc1:
		return 0, 0, 0, false, errors.New("byte 0xc1, which MessagePack never uses,")
	}
	hdr = headerLen[c-0xc0]
	if len(b) < hdr {
		return 0, 0, 0, false, fmt.Errorf("%d-byte header cut short", hdr)
	}
	switch c {
	case 0xc4, 0xd9: // bin 8, str 8
		size = uint64(b[1])
	case 0xc5, 0xda: // bin 16, str 16
		size = uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xc6, 0xdb: // bin 32, str 32
		size = uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xdc: // array 16
		items = uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xdd: // array 32
		items = uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xde: // map 16
		items = 2 * uint64(binary.BigEndian.Uint16(b[1:]))
	case 0xdf: // map 32
		items = 2 * uint64(binary.BigEndian.Uint32(b[1:]))
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16: type, payload
		size, isExt = 1<<(c-0xd4), true
	case 0xc7: // ext 8: length, type, payload
		size, isExt = uint64(b[1]), true
	case 0xc8: // ext 16
		size, isExt = uint64(binary.BigEndian.Uint16(b[1:])), true
	case 0xc9: // ext 32
		size, isExt = uint64(binary.BigEndian.Uint32(b[1:])), true
	}
	return hdr, size, items, isExt, nil
}

// headerLen is the header length of the codes from 0xc0 to 0xdf: the code,
// then a length, an extension's type, or a number.
var headerLen = [32]int{
	1, 1, 1, 1, // 0xc0 nil, 0xc1 never used, 0xc2 false, 0xc3 true
	2, 3, 5, // 0xc4-0xc6 bin 8, 16, 32
	3, 4, 6, // 0xc7-0xc9 ext 8, 16, 32
	5, 9, // 0xca-0xcb float 32, 64
	2, 3, 5, 9, // 0xcc-0xcf uint 8, 16, 32, 64
	2, 3, 5, 9, // 0xd0-0xd3 int 8, 16, 32, 64
	2, 2, 2, 2, 2, // 0xd4-0xd8 fixext 1, 2, 4, 8, 16
	2, 3, 5, // 0xd9-0xdb str 8, 16, 32
	3, 5, // 0xdc-0xdd array 16, 32
	3, 5, // 0xde-0xdf map 16, 32
}

// Reader reads checked bytes for a msgpack.Decoder: it is an io.Reader and
// an io.ByteScanner, so the decoder reads it directly, without a buffer of
// its own. It refuses to let the decoder read a value's code at the start of
// an extension's payload, which Check saw as opaque bytes: that is the one
// place where github.com/vmihailenco/msgpack/v5 reads values from bytes it
// did not reach by the lengths the bytes declare (see the package doc). The
// decoder reads an extension's payload as a whole (Read), never code by code,
// when it decodes the extension itself.
//
// The zero Reader is empty. A Reader keeps the offsets of b's extensions
// between Resets, so reuse one.
type Reader struct {
	b    []byte
	i    int
	ext  []int // offsets of the extensions' payloads in b, increasing
	next int   // index in ext of the first offset >= i
}

// errExtAsValue is returned when the decoder reads a value from inside an
// extension's payload.
var errExtAsValue = fmt.Errorf("%w: an extension value where a map is expected", ErrInvalid)

// Reset checks b (see Check) and, if it passes, makes r read it; otherwise r
// is left empty.
func (r *Reader) Reset(b []byte) error {
	r.ext = r.ext[:0]
	r.i, r.next = 0, 0
	if err := walk(b, &r.ext); err != nil {
		r.b = nil
		return err
	}
	r.b = b
	return nil
}

// Release drops r's reference to the bytes it reads.
func (r *Reader) Release() {
	r.b = nil
	r.ext = r.ext[:0]
}

// Read reads up to len(p) bytes.
func (r *Reader) Read(p []byte) (int, error) {
	if r.i >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.i:])
	r.i += n
	return n, nil
}

// ReadByte reads one byte: a value's code, or a one-byte part of a header.
func (r *Reader) ReadByte() (byte, error) {
	if r.i >= len(r.b) {
		return 0, io.EOF
	}
	if len(r.ext) > 0 {
		for r.next < len(r.ext) && r.ext[r.next] < r.i {
			r.next++
		}
		if r.next < len(r.ext) && r.ext[r.next] == r.i {
			return 0, errExtAsValue
		}
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

// UnreadByte steps back over the last byte read.
func (r *Reader) UnreadByte() error {
	if r.i == 0 {
		return errors.New("msgpackcheck: UnreadByte at the start")
	}
	r.i--
	if r.next > 0 && r.ext[r.next-1] >= r.i {
		r.next--
	}
	return nil
}
