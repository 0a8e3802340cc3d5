package cache

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/klauspost/compress/s2"

	"github.com/stockpot-go/cache/internal/envelope"
)

// encode returns v's stored form: the envelope with header h around v's
// encoding, compressed above Options.CompressAbove where that saves an
// eighth.
func (m *Manager) encode(v any, h envelope.Header) ([]byte, error) {
	payload, flags, err := m.marshal(v)
	if err != nil {
		return nil, err
	}
	h.Flags |= flags
	return m.seal(v, h, payload)
}

// marshal returns v's encoding, compressed above Options.CompressAbove, and
// the flags that say so.
func (m *Manager) marshal(v any) ([]byte, envelope.Flags, error) {
	payload, err := m.opts.Codec.Marshal(v)
	if err != nil {
		return nil, 0, wrap(err, "encode %T", v)
	}
	if len(payload) > m.maxDecoded() {
		// Compressed below MaxValueSize or not, it would not be read back.
		return nil, 0, fmt.Errorf("%w: %T encodes to %d bytes, more than %d (%d times MaxValueSize, %d)",
			ErrValueTooLarge, v, len(payload), m.maxDecoded(), maxExpansion, m.opts.MaxValueSize)
	}
	if m.opts.CompressAbove >= 0 && len(payload) > m.opts.CompressAbove {
		if c := s2.Encode(nil, payload); len(c) <= len(payload)-len(payload)/8 {
			return c, envelope.Compressed, nil
		}
	}
	return payload, 0, nil
}

// compressAboveDefault is Options.CompressAbove's default. Below about 100
// bytes S2 rarely finds a repeat to save; above it, a value of repeated
// field names and strings (the 20 rows of the benchmarks, 2003 bytes of
// MessagePack) shrinks to a fifth, and decompressing it costs about 2% of
// decoding it.
const compressAboveDefault = 128

// inflateBufs holds buffers that compressed payloads are decompressed
// into: a codec does not keep the bytes it decodes (see Codec), so a hit
// need not allocate them. Buffers up to inflateBufMax are kept.
var inflateBufs = sync.Pool{New: func() any { return new([]byte) }}

const inflateBufMax = 64 << 10

// seal returns the envelope of v's payload with header h, or
// ErrValueTooLarge.
func (m *Manager) seal(v any, h envelope.Header, payload []byte) ([]byte, error) {
	hl := envelope.HeaderLen(h)
	if n := hl + len(payload); n > m.opts.MaxValueSize {
		return nil, fmt.Errorf("%w: %T is %d bytes stored, MaxValueSize is %d", ErrValueTooLarge, v, n, m.opts.MaxValueSize)
	}
	return envelope.Append(make([]byte, 0, hl+len(payload)), h, payload), nil
}

// negative returns the stored form of a remembered ErrNotFound, with header
// h (its times set here).
func (m *Manager) negative(now time.Time, ttl time.Duration, h envelope.Header) []byte {
	h.Flags = envelope.Negative
	h.WrittenAt = now.UnixMilli()
	h.FreshUntil = freshUntil(now, ttl)
	return envelope.Append(nil, h, nil)
}

// freshUntil is the fresh-until of an entry written at now to live ttl (0
// for no expiry).
func freshUntil(now time.Time, ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return now.Add(ttl).UnixMilli()
}

// maxExpansion is how many times MaxValueSize a value's encoding may be
// before compression. A few bytes of S2 can claim any length and expand to
// it, so this bounds what a hostile compressed value can make a read
// decompress, and then decode.
const maxExpansion = 8

// maxDecoded is the largest encoding the Manager writes, and the most a
// compressed payload may decompress to when read, so that corrupt or
// hostile bytes cannot make a read allocate without limit.
func (m *Manager) maxDecoded() int {
	if m.opts.MaxValueSize > math.MaxInt/maxExpansion {
		return math.MaxInt
	}
	return maxExpansion * m.opts.MaxValueSize
}

// decodePayload decodes an envelope's payload into dst. What it decodes is
// no larger than what the Manager writes: MaxValueSize, or maxDecoded once
// decompressed; larger bytes were not written by a Manager with these
// options, and would make the decode allocate in proportion.
func (m *Manager) decodePayload(h envelope.Header, payload []byte, dst any) error {
	if len(payload) > m.opts.MaxValueSize {
		return fmt.Errorf("stored value is %d bytes, more than MaxValueSize (%d)", len(payload), m.opts.MaxValueSize)
	}
	if h.Flags&envelope.Compressed != 0 {
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return err
		}
		if n > m.maxDecoded() {
			return fmt.Errorf("compressed value claims %d bytes, more than %d", n, m.maxDecoded())
		}
		buf := inflateBufs.Get().(*[]byte)
		defer func() {
			if cap(*buf) <= inflateBufMax {
				inflateBufs.Put(buf)
			}
		}()
		out, err := s2.Decode((*buf)[:cap(*buf)], payload)
		if err != nil {
			return err
		}
		*buf, payload = out, out
	}
	return m.opts.Codec.Unmarshal(payload, dst)
}

// readState is what a read found.
type readState uint8

const (
	stateMiss      readState = iota // nothing usable
	stateHit                        // a fresh value
	stateStale                      // a value past its fresh-until, still in Redis
	stateNegative                   // a remembered ErrNotFound, still fresh
	stateOtherTags                  // an entry whose tags' generations were not read with it
)

// expect is what an entry must have been stored under to be served: the
// generations its container and its tags have now.
type expect struct {
	gen  string   // the container's generation; "" for an entry without one
	tags []string // the tags whose generations were read
	gens []string // their generations ("" where one has none)
}

// lookup decodes stored bytes b of ref into dst, if they were stored under
// want (nil: a string entry without tags, or any tags for stateOtherTags
// to report). Bytes that do not decode are counted and reported as a miss,
// with the reason.
func (m *Manager) lookup(st *counters, ref entryRef, b []byte, want *expect, dst any) (envelope.Header, readState, error) {
	h, payload, err := envelope.Decode(b)
	if m.pending.n.Load() > 0 && m.pending.covers(ref, h.Tags) {
		return h, stateMiss, nil // an invalidation of it failed, and waits to be retried
	}
	if err == nil {
		var tags, gens []string
		if want != nil {
			if want.gen != "" && !sameGen(h.Gen, want.gen) {
				return h, stateMiss, nil
			}
			tags, gens = want.tags, want.gens
		}
		switch checkTags(h.Tags, tags, gens) {
		case tagsMoved:
			return h, stateMiss, nil
		case tagsOther:
			return h, stateOtherTags, nil
		}
	}
	now := m.now().UnixMilli()
	fresh := h.FreshUntil == 0 || now < h.FreshUntil
	if err == nil && h.Flags&envelope.Negative != 0 {
		if fresh {
			return h, stateNegative, nil
		}
		return h, stateMiss, nil
	}
	if err == nil {
		err = m.decodePayload(h, payload, dst)
	}
	if err != nil {
		st.add(EventDecodeError, 1)
		err = &DecodeError{Key: ref.key, Field: ref.field, Err: err}
		m.log.Debug("cache: stored value does not decode", "err", err)
		return h, stateMiss, err
	}
	if !fresh {
		return h, stateStale, nil
	}
	return h, stateHit, nil
}

// sameGen reports whether an envelope's generation is gen, the decimal
// value of a generation key ("0" when the key is absent).
func sameGen(g uint64, gen string) bool {
	n, err := strconv.ParseUint(gen, 10, 64)
	return err == nil && n == g
}

// parseGen returns gen's value, 0 when it is not a number.
func parseGen(gen string) uint64 {
	if gen == "" {
		return 0 // no container: not worth ParseUint's error
	}
	n, _ := strconv.ParseUint(gen, 10, 64)
	return n
}

// bytesOf returns the bytes of s without copying them. The result must not
// be changed; codecs only read it (see Codec).
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
