// Package envelope is the stored format of every value stockpot writes to
// Redis: a small versioned header in front of the encoded value.
//
// The header carries what the caching patterns need to decide about an entry
// without decoding the value itself:
//
//	byte 0      magic 0xC1 (a byte MessagePack never uses and no UTF-8 text
//	            starts with, so values written by other programs are told apart)
//	byte 1      format version, 1
//	byte 2      flags: bit 0 compressed (S2), bit 1 negative entry (a
//	            remembered "not found"), bit 2 tagged; other bits must be
//	            zero
//	uvarint     written-at, Unix milliseconds
//	uvarint     fresh-until, Unix milliseconds; 0 when the entry has no
//	            freshness of its own (it is fresh while Redis keeps it)
//	uvarint     load duration, microseconds (0 when the value was not loaded)
//	uvarint     generation of the entry's container (memo or hash); 0 for none
//	tags        only when the tagged flag is set: a uvarint byte length, then
//	            for each tag the entry was stored with, a uvarint name length,
//	            the name, and a uvarint: the tag's generation when the entry
//	            was stored
//	rest        the payload: the value as its codec encoded it, compressed
//	            when the compressed flag is set
//
// Decode never panics: bytes that are not an envelope of a known version
// return an error wrapping ErrCorrupt.
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic is the first byte of every envelope.
const Magic = 0xC1

// Version is the format version this package writes.
const Version = 1

// Flags are the header's flag bits.
type Flags uint8

const (
	// Compressed marks a payload compressed with S2.
	Compressed Flags = 1 << iota
	// Negative marks a remembered miss: the payload is empty.
	Negative
	// Tagged marks a header with a tags section (Header.Tags).
	Tagged

	known = Compressed | Negative | Tagged
)

// Header is the envelope's metadata.
type Header struct {
	Flags        Flags
	WrittenAt    int64  // Unix milliseconds
	FreshUntil   int64  // Unix milliseconds; 0 for none
	LoadDuration uint64 // microseconds
	Gen          uint64 // container generation; 0 for none
	// Tags is the tags section, built with AppendTag and read with NextTag;
	// nil for none. Decode's aliases the bytes it decoded.
	Tags []byte
}

// ErrCorrupt is wrapped by every Decode error.
var ErrCorrupt = errors.New("envelope: not a stockpot value")

// Append appends the envelope of payload with header h to dst. The tagged
// flag is set when h has tags, and cleared when it has none.
func Append(dst []byte, h Header, payload []byte) []byte {
	flags := h.Flags &^ Tagged
	if len(h.Tags) > 0 {
		flags |= Tagged
	}
	dst = append(dst, Magic, Version, byte(flags))
	dst = binary.AppendUvarint(dst, uint64(h.WrittenAt))
	dst = binary.AppendUvarint(dst, uint64(h.FreshUntil))
	dst = binary.AppendUvarint(dst, h.LoadDuration)
	dst = binary.AppendUvarint(dst, h.Gen)
	if len(h.Tags) > 0 {
		dst = binary.AppendUvarint(dst, uint64(len(h.Tags)))
		dst = append(dst, h.Tags...)
	}
	return append(dst, payload...)
}

// HeaderLen returns the length of h's encoding.
func HeaderLen(h Header) int {
	n := 3 + uvarintLen(uint64(h.WrittenAt)) + uvarintLen(uint64(h.FreshUntil)) + uvarintLen(h.LoadDuration) + uvarintLen(h.Gen)
	if len(h.Tags) > 0 {
		n += uvarintLen(uint64(len(h.Tags))) + len(h.Tags)
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// AppendTag appends the tag name, with its generation gen, to a tags
// section.
func AppendTag(tags []byte, name string, gen uint64) []byte {
	tags = binary.AppendUvarint(tags, uint64(len(name)))
	tags = append(tags, name...)
	return binary.AppendUvarint(tags, gen)
}

// NextTag returns the first tag of a tags section, its generation, and the
// rest of the section; ok is false at the section's end, or when it does
// not parse (Decode checks that it does).
func NextTag(tags []byte) (name []byte, gen uint64, rest []byte, ok bool) {
	n, k := binary.Uvarint(tags)
	if k <= 0 || n > uint64(len(tags)-k) {
		return nil, 0, nil, false
	}
	name, tags = tags[k:k+int(n)], tags[k+int(n):]
	gen, k = binary.Uvarint(tags)
	if k <= 0 {
		return nil, 0, nil, false
	}
	return name, gen, tags[k:], true
}

// Decode splits b into its header and payload. The payload aliases b.
func Decode(b []byte) (Header, []byte, error) {
	var h Header
	if len(b) < 3 || b[0] != Magic {
		return h, nil, ErrCorrupt
	}
	if b[1] != Version {
		return h, nil, fmt.Errorf("%w: format version %d", ErrCorrupt, b[1])
	}
	h.Flags = Flags(b[2])
	if h.Flags&^known != 0 {
		return h, nil, fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, b[2])
	}
	b = b[3:]
	var fields [4]uint64
	for i := range fields {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return h, nil, fmt.Errorf("%w: truncated header", ErrCorrupt)
		}
		fields[i] = v
		b = b[n:]
	}
	h.WrittenAt = int64(fields[0])
	h.FreshUntil = int64(fields[1])
	h.LoadDuration = fields[2]
	h.Gen = fields[3]
	if h.WrittenAt < 0 || h.FreshUntil < 0 {
		return h, nil, fmt.Errorf("%w: time out of range", ErrCorrupt)
	}
	if h.Flags&Tagged != 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || n == 0 || n > uint64(len(b)-k) {
			return h, nil, fmt.Errorf("%w: truncated tags", ErrCorrupt)
		}
		h.Tags, b = b[k:k+int(n)], b[k+int(n):]
		for rest := h.Tags; len(rest) > 0; {
			var ok bool
			if _, _, rest, ok = NextTag(rest); !ok {
				return h, nil, fmt.Errorf("%w: malformed tags", ErrCorrupt)
			}
		}
	}
	if h.Flags&Negative != 0 && len(b) != 0 {
		return h, nil, fmt.Errorf("%w: negative entry with a payload", ErrCorrupt)
	}
	return h, b, nil
}
