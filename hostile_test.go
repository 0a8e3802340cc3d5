package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/klauspost/compress/s2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/testredis"
)

// Anyone who can write to the Redis keyspace can put any bytes at an
// entry's key. These tests write crafted bytes there with the raw client
// and read them back through every read path and into many destination
// types: each read must be a hit or a counted miss, never a panic, and
// must not allocate beyond a small multiple of the bytes' size.

// hostileItem is a destination struct.
type hostileItem struct {
	ID    int64             `json:"id"`
	Name  string            `json:"name"`
	Tags  map[string]string `json:"tags"`
	Items []string          `json:"items"`
	When  time.Time         `json:"when"`
}

// query is a memo argument.
type query struct {
	Region string
	Limit  int
}

// hostileCase is crafted bytes for an entry: a payload of a codec, in an
// envelope.
type hostileCase struct {
	name   string
	codec  Codec
	stored []byte
	// bad: the bytes decode into no destination; otherwise some may take
	// them (a hit), and the others must miss.
	bad bool
}

func storedBytes(flags envelope.Flags, payload []byte) []byte {
	return envelope.Append(nil, envelope.Header{Flags: flags, WrittenAt: 1}, payload)
}

// withGenOf returns crafted bytes b with the generation of the stored
// entry current; b when it is not an envelope.
func withGenOf(t *testing.T, current string, b []byte) []byte {
	t.Helper()
	h, _, err := envelope.Decode([]byte(current))
	require.NoError(t, err)
	bh, payload, err := envelope.Decode(b)
	if err != nil {
		return b
	}
	bh.Gen = h.Gen
	return envelope.Append(nil, bh, payload)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// hostileCases are the crafted bytes, the first ones the attacks that
// killed the process before reads checked what they decode.
func hostileCases() []hostileCase {
	nestedArrays := append(bytes.Repeat([]byte{0x91}, 2<<20), 0xc0)
	nestedMaps := append(bytes.Repeat([]byte{0x81, 0xa0}, 1<<20), 0xc0)
	arrayBomb := []byte{0xdd, 0x80, 0, 0, 0, 0xc0}
	claim := func(n uint64) []byte { return binary.AppendUvarint(nil, n) }
	mp := func(name string, payload []byte, bad bool) hostileCase {
		return hostileCase{name: "msgpack/" + name, codec: Msgpack, stored: storedBytes(0, payload), bad: bad}
	}
	js := func(name string, payload []byte) hostileCase {
		return hostileCase{name: "json/" + name, codec: JSON, stored: storedBytes(0, payload), bad: true}
	}
	s2c := func(codec Codec, name string, frame []byte) hostileCase {
		return hostileCase{name: name, codec: codec, stored: storedBytes(envelope.Compressed, frame), bad: true}
	}
	return []hostileCase{
		mp("array of 2^31", arrayBomb, true),
		mp("array of 2^27 int64s", cat([]byte{0xdd, 0x08, 0, 0, 0}, make([]byte, 16)), true),
		mp("bin of 4 GiB", []byte{0xc6, 0xff, 0xff, 0xff, 0xff, 'x'}, true),
		mp("str of 4 GiB", []byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'x'}, true),
		mp("map of 2^31", []byte{0xdf, 0x80, 0, 0, 0, 0xa0, 0xc0}, true),
		mp("ext of 4 GiB", []byte{0xc9, 0xff, 0xff, 0xff, 0xff, 1, 'x'}, true),
		mp("2 MiB of nested arrays", nestedArrays, true),
		mp("2 MiB of nested maps", nestedMaps, true),
		mp("array of 2^31 in an array", cat([]byte{0x92, 0x01}, arrayBomb), true),
		// A map read from inside an extension's payload, where the map
		// decoder looks, holding an array of 2^25 elements.
		mp("map in an extension", []byte{0x92, 0xd6, 0xff, 0x8f, 0xa1, 'a', 0xdd, 0x02, 0x00, 0x00, 0x00}, false),
		mp("unhashable map key", []byte{0x82, 0x01, 0x01, 0x90, 0x02}, true),
		mp("0xc1", []byte{0xc1}, true),
		mp("cut short", []byte{0x93, 0x01, 0xa5, 'a'}, true),
		mp("empty", nil, true),
		s2c(Msgpack, "s2/claims 4 GiB", cat(claim(1<<32-1), []byte{0})),
		s2c(Msgpack, "s2/claims the most it may, holds nothing", cat(claim(maxExpansion<<20), []byte{0})),
		s2c(Msgpack, "s2/array of 2^31, compressed", s2.Encode(nil, arrayBomb)),
		s2c(Msgpack, "s2/nested arrays, compressed", s2.Encode(nil, nestedArrays)),
		// 13 bytes of S2 that decode, to one byte more than a read may
		// decompress: refused before decompressing.
		s2c(Msgpack, "s2/zeros, one byte over the most it may", s2.Encode(nil, make([]byte, maxExpansion<<20+1))),
		// The most a read decompresses, from 13 bytes, none of it a value.
		s2c(Msgpack, "s2/0xc1s, the most it may", s2.Encode(nil, bytes.Repeat([]byte{0xc1}, maxExpansion<<20))),
		s2c(Msgpack, "s2/holds more than it claims", cat(claim(4), []byte{59 << 2}, bytes.Repeat([]byte{0x90}, 60))),
		s2c(Msgpack, "s2/copies from before its start", cat(claim(10), []byte{0x01 | 6<<2, 0x01})),
		js("2 MiB of nested arrays", bytes.Repeat([]byte{'['}, 2<<20)),
		js("2 MiB of nested objects", []byte(strings.Repeat(`{"a":`, 400000))),
		js("cut short", []byte(`[{"id":1,"name":"x`)),
		js("not JSON", []byte("\xff\x00{")),
		s2c(JSON, "json/s2/nested arrays, compressed", s2.Encode(nil, bytes.Repeat([]byte{'['}, 2<<20))),
	}
}

// destination reads an entry of a Manager into one type.
type destination struct {
	name string
	get  func(ctx context.Context, m *Manager, key string) error
}

func getAs[T any](ctx context.Context, m *Manager, key string) error {
	_, err := Get[T](ctx, m, key)
	return err
}

func destinations() []destination {
	return []destination{
		{"[]Item", getAs[[]hostileItem]},
		{"[]*Item", getAs[[]*hostileItem]},
		{"[]any", getAs[[]any]},
		{"any", getAs[any]},
		{"map[string]any", getAs[map[string]any]},
		{"map[any]any", getAs[map[any]any]},
		{"map[string]Item", getAs[map[string]hostileItem]},
		{"string", getAs[string]},
		{"[]byte", getAs[[]byte]},
		{"[]int64", getAs[[]int64]},
		{"Item", getAs[hostileItem]},
		{"map[string][]int64", getAs[map[string][]int64]},
		{"[]map[string][]int64", getAs[[]map[string][]int64]},
		{"time.Time", getAs[time.Time]},
	}
}

// TestHostileBytes reads every crafted value into every destination with
// Get[T]: each read is a hit or a counted miss, and the bombs are misses.
func TestHostileBytes(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		ctx := t.Context()
		managers := map[Codec]*Manager{Msgpack: e.manager(nil), JSON: e.manager(&Options{Codec: JSON, Prefix: "json"})}
		for _, c := range hostileCases() {
			m := managers[c.codec]
			require.NoError(t, m.Client().Set(ctx, m.entryKey(c.name), c.stored, 0).Err())
			before := m.Stats().ByName["keys"].DecodeErrors
			var misses uint64
			for _, d := range destinations() {
				err := d.get(ctx, m, c.name)
				if err == nil && !c.bad {
					continue
				}
				if assert.ErrorIs(t, err, ErrMiss, "%s into %s", c.name, d.name) {
					misses++
				}
			}
			assert.Equal(t, misses, m.Stats().ByName["keys"].DecodeErrors-before, "%s: decode errors counted", c.name)
		}
	})
}

// TestHostileBytesEveryReadPath reads the crafted values with Get, GetMany,
// GetOrLoad, Memo.Get, Hash.Get and Hash.All: a miss, counted, and the
// loaded reads load.
func TestHostileBytesEveryReadPath(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		ctx := t.Context()
		for _, c := range hostileCases() {
			if !c.bad {
				continue
			}
			m := e.manager(&Options{Codec: c.codec})
			rdb := m.Client()
			want := []hostileItem{{ID: 42}}
			load := func(context.Context) ([]hostileItem, error) { return want, nil }

			require.NoError(t, rdb.Set(ctx, m.entryKey("k"), c.stored, 0).Err())
			var dst []hostileItem
			assert.ErrorIs(t, m.Get(ctx, "k", &dst), ErrMiss, c.name)
			many, err := GetMany[[]hostileItem](ctx, m, "k")
			assert.NoError(t, err, c.name)
			assert.Empty(t, many, c.name)
			got, err := GetOrLoad(ctx, m, "k", load)
			assert.NoError(t, err, c.name)
			assert.Equal(t, want, got, c.name)
			// Each read counts (a loaded read may read the entry twice).
			assert.GreaterOrEqual(t, m.Stats().ByName["keys"].DecodeErrors, uint64(3), c.name)

			memo := Memoize(m, "memo", func(ctx context.Context, q query) ([]hostileItem, error) { return want, nil })
			q := query{Region: "Mumbai", Limit: 20}
			k, err := memo.Key(q)
			require.NoError(t, err)
			// The crafted bytes carry the memo's generation, so that the
			// read decodes them rather than missing on the generation.
			_, err = memo.Get(ctx, q)
			require.NoError(t, err)
			require.NoError(t, rdb.Set(ctx, k, withGenOf(t, rdb.Get(ctx, k).Val(), c.stored), 0).Err())
			got, err = memo.Get(ctx, q)
			assert.NoError(t, err, c.name)
			assert.Equal(t, want, got, c.name)
			assert.GreaterOrEqual(t, m.Stats().ByName["memo:memo"].DecodeErrors, uint64(1), c.name)

			h := NewHash[[]hostileItem](m, "hash")
			require.NoError(t, rdb.HSet(ctx, m.hashKeys("hash").key, "f", c.stored, "g", c.stored).Err())
			_, err = h.Get(ctx, "f")
			assert.ErrorIs(t, err, ErrMiss, c.name)
			all, err := h.All(ctx)
			var fe FieldErrors
			assert.ErrorAs(t, err, &fe, c.name)
			assert.Len(t, fe, 2, c.name)
			assert.Empty(t, all, c.name)
			got, err = h.GetOrLoad(ctx, "g", func(context.Context, string) ([]hostileItem, error) { return want, nil })
			assert.NoError(t, err, c.name)
			assert.Equal(t, want, got, c.name)
			assert.GreaterOrEqual(t, m.Stats().ByName["hash:hash"].DecodeErrors, uint64(4), c.name)
		}
	})
}

// TestDecodePanicIsAnError: a decoder that panics on stored bytes (msgpack
// does on a map key Go cannot hash) returns an error.
func TestDecodePanicIsAnError(t *testing.T) {
	var m map[any]any
	err := Msgpack.Unmarshal([]byte{0x82, 0x01, 0x01, 0x90, 0x02}, &m)
	assert.ErrorContains(t, err, "unhashable")
	var p panicky
	assert.ErrorContains(t, JSON.Unmarshal([]byte("1"), &p), "json: decoding panicked")
	// The pooled decoder still works.
	var s string
	require.NoError(t, Msgpack.Unmarshal([]byte{0xa1, 'a'}, &s))
	assert.Equal(t, "a", s)
}

type panicky struct{}

func (*panicky) UnmarshalJSON([]byte) error { panic("on purpose") }

// heapChildEnv is set in the child process that TestHostileHeap runs.
const heapChildEnv = "STOCKPOT_HOSTILE_HEAP_CHILD"

// TestHostileHeap runs TestHostileHeapChild in a child process, so that a
// read that runs out of memory or stack fails this test rather than ending
// the test binary.
func TestHostileHeap(t *testing.T) {
	if os.Getenv(heapChildEnv) != "" {
		t.Skip("in the child")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHostileHeapChild$", "-test.v", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), heapChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestHostileHeapChild")) {
		t.Fatalf("child: %v\n%s", err, childSummary(out))
	}
	t.Logf("child:\n%s", childSummary(out))
}

// childSummary returns the lines of a child's output that say what happened:
// the test's own, and how it crashed, without the goroutine dumps.
func childSummary(out []byte) string {
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "hostile_test.go") || strings.Contains(l, "TestHostileHeapChild") ||
			strings.HasPrefix(l, "fatal error") || strings.HasPrefix(l, "panic") || strings.HasPrefix(l, "runtime:") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// What a read of stored bytes may allocate. Checked bytes declare no more
// than they hold, so what a decode allocates is in proportion to the bytes
// it decodes: for every byte, at most one element of the destination (a
// nil is one byte, and becomes a zero struct in a []Item), made twice
// (msgpack allocates a slice, then appends it to the destination), and a
// map or slice header for an empty map or array in an interface. Hostile
// bytes are refused before they decode, and allocate little: heapFactor
// times their length, plus heapSlack for the client, the server's reply
// and the decoder. A compressed value may in addition decompress to the
// Manager's maxDecoded.
const (
	heapFactor = 64
	heapSlack  = 256 << 10
	// perByte bounds a decode of well-formed bytes into the destinations
	// of these tests, per byte decoded.
	perByte = 2 * (int(unsafe.Sizeof(hostileItem{})) + 48)
)

// TestHostileHeapChild reads each crafted value into the destinations it
// attacks, counting the bytes each read allocates.
func TestHostileHeapChild(t *testing.T) {
	if os.Getenv(heapChildEnv) == "" {
		t.Skip("run by TestHostileHeap in a child process")
	}
	debug.SetMaxStack(64 << 20) // a runaway recursion fails fast
	_, rdb := testredis.Mini(t)
	ctx := t.Context()
	managers := map[Codec]*Manager{}
	for _, codec := range []Codec{Msgpack, JSON} {
		m, err := New(rdb, &Options{Codec: codec, Prefix: fmt.Sprintf("%T", codec)})
		require.NoError(t, err)
		t.Cleanup(func() { closeWithin(t, m) })
		managers[codec] = m
	}
	worst := 0.0
	for _, c := range hostileCases() {
		m := managers[c.codec]
		require.NoError(t, rdb.Set(ctx, m.entryKey(c.name), c.stored, 0).Err())
		bound := uint64(heapFactor*len(c.stored) + heapSlack)
		compressed := false
		if h, _, err := envelope.Decode(c.stored); err == nil && h.Flags&envelope.Compressed != 0 {
			bound += uint64(m.maxDecoded())
			compressed = true
		}
		t.Logf("%s (%d bytes)", c.name, len(c.stored))
		for _, d := range destinations() {
			n := allocated(func() {
				err := d.get(ctx, m, c.name)
				if c.bad && !errors.Is(err, ErrMiss) {
					t.Errorf("%s into %s: %v, want ErrMiss", c.name, d.name, err)
				}
			})
			if n > bound {
				t.Errorf("%s into %s: allocated %d bytes reading %d, more than %d", c.name, d.name, n, len(c.stored), bound)
			}
			if !compressed && len(c.stored) > 1024 {
				worst = max(worst, float64(n)/float64(len(c.stored)))
			}
		}
	}
	t.Logf("the most a read of more than 1 KiB allocated: %.1f times the stored bytes", worst)
}

// allocated returns the bytes allocated while f runs (by every goroutine:
// nothing else runs meanwhile in these tests).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestHostileLegitimateWorstCase measures what a decode of well-formed
// bytes into the types that allocate most per byte costs: every element
// one byte (nil, an empty map, an empty array), so that the allocation is
// the destination's element size times the bytes.
func TestHostileLegitimateWorstCase(t *testing.T) {
	const n = 1 << 16
	cases := []struct {
		name string
		b    []byte
		dst  func() any
	}{
		{"nils into []any", cat([]byte{0xdd, 0, 1, 0, 0}, bytes.Repeat([]byte{0xc0}, n)), func() any { return new([]any) }},
		{"empty maps into []any", cat([]byte{0xdd, 0, 1, 0, 0}, bytes.Repeat([]byte{0x80}, n)), func() any { return new([]any) }},
		{"empty arrays into []any", cat([]byte{0xdd, 0, 1, 0, 0}, bytes.Repeat([]byte{0x90}, n)), func() any { return new([]any) }},
		{"nils into []Item", cat([]byte{0xdd, 0, 1, 0, 0}, bytes.Repeat([]byte{0xc0}, n)), func() any { return new([]hostileItem) }},
		{"entries into map[string]any", cat([]byte{0xdf, 0, 0, 0x80, 0}, bytes.Repeat([]byte{0xa0, 0xc0}, n/2)), func() any { return new(map[string]any) }},
	}
	for _, c := range cases {
		var err error
		a := allocated(func() { err = Msgpack.Unmarshal(c.b, c.dst()) })
		require.NoError(t, err, c.name)
		t.Logf("%s: %.1f bytes allocated per byte", c.name, float64(a)/float64(len(c.b)))
		assert.LessOrEqual(t, a, uint64(perByte*len(c.b)), c.name)
	}
}

// FuzzDecodeStored reads fuzzed stored bytes into typed destinations the
// way every read does (envelope, decompression, codec): no panic, and no
// more allocation than the bound of TestHostileHeapChild.
func FuzzDecodeStored(f *testing.F) {
	for _, c := range hostileCases() {
		if len(c.stored) < 1024 {
			f.Add(c.stored, c.codec == JSON, uint8(0))
		}
	}
	for _, v := range []any{[]hostileItem{{ID: 1, Name: "a", Tags: map[string]string{"r": "m"}, When: time.Unix(1<<31, 5)}}, map[string]any{"a": []any{1, "x"}}, "s", []byte("b")} {
		for _, codec := range []Codec{Msgpack, JSON} {
			b, err := codec.Marshal(v)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(storedBytes(0, b), codec == JSON, uint8(0))
			f.Add(storedBytes(envelope.Compressed, s2.Encode(nil, b)), codec == JSON, uint8(1))
		}
	}
	// Nothing here reaches Redis but the scripts New loads in the
	// background, which fail; the clients are closed after the Managers.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	f.Cleanup(func() { _ = rdb.Close() })
	m, err := New(rdb, &Options{MaxValueSize: 64 << 10})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { closeWithin(f, m) })
	mj, err := New(rdb, &Options{MaxValueSize: 64 << 10, Codec: JSON})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { closeWithin(f, mj) })
	dsts := []func() any{
		func() any { return new([]hostileItem) }, func() any { return new(map[string]any) }, func() any { return new(any) },
		func() any { return new(string) }, func() any { return new([]byte) }, func() any { return new([]int64) },
		func() any { return new(hostileItem) }, func() any { return new(map[string][]int64) }, func() any { return new([]any) },
	}
	st := &counters{}
	f.Fuzz(func(t *testing.T, b []byte, json bool, dst uint8) {
		mm := m
		if json {
			mm = mj
		}
		// Bytes that decode are bounded by perByte for every byte decoded.
		decoded := len(b)
		if h, p, err := envelope.Decode(b); err == nil && h.Flags&envelope.Compressed != 0 {
			if n, err := s2.DecodedLen(p); err == nil && n <= mm.maxDecoded() {
				decoded += 2 * n
			}
		}
		bound := uint64(perByte*decoded + heapSlack)
		n := allocated(func() {
			mm.lookup(st, entryRef{key: "k"}, b, nil, dsts[int(dst)%len(dsts)]())
		})
		if n > bound {
			t.Fatalf("allocated %d bytes reading %d, more than %d", n, len(b), bound)
		}
	})
}
