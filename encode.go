package cache

import (
	"fmt"
	"math"
	"strconv"
	"time"
	"unsafe"

	"github.com/klauspost/compress/s2"

	"github.com/stockpot-go/cache/internal/envelope"
)

// encode returns v's stored form: the envelope with header h around v's
// encoding, compressed above Options.CompressAbove.
func (m *Manager) encode(v any, h envelope.Header) ([]byte, error) {
	payload, err := m.opts.Codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cache: encode %T: %w", v, err)
	}
	if len(payload) > m.maxDecoded() {
		// Compressed below MaxValueSize or not, it would not be read back.
		return nil, fmt.Errorf("%w: %T encodes to %d bytes, more than %d (%d times MaxValueSize, %d)",
			ErrValueTooLarge, v, len(payload), m.maxDecoded(), maxExpansion, m.opts.MaxValueSize)
	}
	if m.opts.CompressAbove >= 0 && len(payload) > m.opts.CompressAbove {
		if c := s2.Encode(nil, payload); len(c) < len(payload) {
			payload = c
			h.Flags |= envelope.Compressed
		}
	}
	if n := envelope.MaxHeaderLen + len(payload); n > m.opts.MaxValueSize {
		// The header's true length is a few bytes less; measure it exactly
		// only when the bound says the value may be too large.
		if n = len(envelope.Append(nil, h, nil)) + len(payload); n > m.opts.MaxValueSize {
			return nil, fmt.Errorf("%w: %T is %d bytes stored, MaxValueSize is %d", ErrValueTooLarge, v, n, m.opts.MaxValueSize)
		}
	}
	return envelope.Append(make([]byte, 0, envelope.MaxHeaderLen+len(payload)), h, payload), nil
}

// negative returns the stored form of a remembered ErrNotFound.
func (m *Manager) negative(now time.Time, ttl time.Duration, gen uint64) []byte {
	return envelope.Append(nil, envelope.Header{
		Flags:      envelope.Negative,
		WrittenAt:  now.UnixMilli(),
		FreshUntil: freshUntil(now, ttl),
		Gen:        gen,
	}, nil)
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
		if payload, err = s2.Decode(nil, payload); err != nil {
			return err
		}
	}
	return m.opts.Codec.Unmarshal(payload, dst)
}

// readState is what a read found.
type readState uint8

const (
	stateMiss     readState = iota // nothing usable
	stateHit                       // a fresh value
	stateStale                     // a value past its fresh-until, still in Redis
	stateNegative                  // a remembered ErrNotFound, still fresh
)

// lookup decodes stored bytes b of ref into dst. When wantGen is not "" the
// entry counts only if it was written under that generation. Bytes that do
// not decode are counted and reported as a miss.
func (m *Manager) lookup(st *counters, ref entryRef, b []byte, wantGen string, dst any) (envelope.Header, readState) {
	h, payload, err := envelope.Decode(b)
	if err == nil && wantGen != "" && !sameGen(h.Gen, wantGen) {
		return h, stateMiss
	}
	now := m.now().UnixMilli()
	fresh := h.FreshUntil == 0 || now < h.FreshUntil
	if err == nil && h.Flags&envelope.Negative != 0 {
		if fresh {
			return h, stateNegative
		}
		return h, stateMiss
	}
	if err == nil {
		err = m.decodePayload(h, payload, dst)
	}
	if err != nil {
		st.add(EventDecodeError, 1)
		m.log.Debug("cache: stored value does not decode", "err", &DecodeError{Key: ref.key, Field: ref.field, Err: err})
		return h, stateMiss
	}
	if !fresh {
		return h, stateStale
	}
	return h, stateHit
}

// sameGen reports whether an envelope's generation is gen, the decimal
// value of a generation key ("0" when the key is absent).
func sameGen(g uint64, gen string) bool {
	n, err := strconv.ParseUint(gen, 10, 64)
	return err == nil && n == g
}

// parseGen returns gen's value, 0 when it is not a number.
func parseGen(gen string) uint64 {
	n, _ := strconv.ParseUint(gen, 10, 64)
	return n
}

// bytesOf returns the bytes of s without copying them. The result must not
// be changed; codecs only read it (see Codec).
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
