package msgpackcheck

import (
	"bytes"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

type item struct {
	ID    int64             `msgpack:"id"`
	Name  string            `msgpack:"name"`
	When  time.Time         `msgpack:"when"`
	Blob  []byte            `msgpack:"blob"`
	Tags  map[string]string `msgpack:"tags"`
	Price float64           `msgpack:"price"`
	Any   any               `msgpack:"any"`
}

// point is a type registered as a MessagePack extension.
type point struct{ X, Y int16 }

func (p *point) MarshalMsgpack() ([]byte, error) {
	return []byte{byte(p.X >> 8), byte(p.X), byte(p.Y >> 8), byte(p.Y)}, nil
}

func (p *point) UnmarshalMsgpack(b []byte) error {
	if len(b) != 4 {
		return errors.New("point: want 4 bytes")
	}
	p.X, p.Y = int16(b[0])<<8|int16(b[1]), int16(b[2])<<8|int16(b[3])
	return nil
}

func init() { msgpack.RegisterExt(17, (*point)(nil)) }

// goodValues are values whose encodings must pass Check and decode through
// a Reader as they do without it.
func goodValues() []any {
	deep := any(nil)
	for range MaxDepth - 1 {
		deep = []any{deep}
	}
	return []any{
		nil, true, 0, -1, 127, 128, -33, math.MaxInt64, math.MinInt64, uint64(math.MaxUint64),
		1.5, float32(2.5), "", "héllo", strings.Repeat("x", 300), strings.Repeat("y", 70000),
		[]byte{}, []byte("bin"), bytes.Repeat([]byte{0xc1}, 70000),
		[]int{}, []int{1, 2, 3}, make([]int, 20), map[string]int{}, map[string]int{"a": 1, "b": 2},
		map[int]string{1: "x"}, []any{nil, "a", 1.0, []any{map[string]any{"k": []any{}}}},
		time.Time{}, time.Unix(1<<31, 0), time.Unix(1<<31+0x0f000000, 0), time.Unix(1, 999999999),
		time.Unix(1<<40, 5), time.Date(2040, 1, 1, 0, 0, 0, 560000000, time.UTC),
		[]time.Time{time.Unix(1<<31, 0), time.Unix(1<<31+1, 0)},
		map[string]time.Time{"a": time.Unix(1<<31+0x0e000000, 0)},
		&point{X: -1, Y: 0x7f}, []*point{{X: 0x0f, Y: 1}, {X: 0x1e00, Y: -2}},
		[]item{{ID: 1, Name: "a", When: time.Unix(1<<31, 0), Blob: []byte{0x8f, 0xdd}, Tags: map[string]string{"r": "m"}, Any: []any{1}}},
		make([]struct{}, 1000), deep,
	}
}

func TestGoodValuesPass(t *testing.T) {
	for _, v := range goodValues() {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatalf("Marshal(%T): %v", v, err)
		}
		if err := Check(b); err != nil {
			t.Errorf("Check(%T %.40x): %v", v, b, err)
		}
	}
}

// decode decodes b into v through a Reader, as the cache's codec does.
func decode(b []byte, v any) error {
	var r Reader
	if err := r.Reset(b); err != nil {
		return err
	}
	return msgpack.NewDecoder(&r).Decode(v)
}

func TestReaderDecodesGoodValues(t *testing.T) {
	cases := []struct {
		v   any
		dst func() any
	}{
		{[]time.Time{time.Unix(1<<31, 0), time.Unix(1<<31+0x0e000000, 0), time.Unix(3, 560000000)}, func() any { return new([]time.Time) }},
		{map[string]time.Time{"a": time.Unix(1<<31+0x0f000000, 0)}, func() any { return new(map[string]time.Time) }},
		{[]*point{{X: 0x0f, Y: 1}, {X: -0x7000, Y: 2}}, func() any { return new([]*point) }},
		{[]item{{ID: 7, When: time.Unix(1<<31, 0), Any: &point{X: 0x0e00}}}, func() any { return new([]item) }},
		{map[string]any{"t": time.Unix(1<<31, 0), "p": &point{X: 0x0f00}}, func() any { return new(any) }},
	}
	for _, c := range cases {
		b, err := msgpack.Marshal(c.v)
		if err != nil {
			t.Fatal(err)
		}
		want, got := c.dst(), c.dst()
		if err := msgpack.Unmarshal(b, want); err != nil {
			t.Fatalf("Unmarshal(%T): %v", c.v, err)
		}
		if err := decode(b, got); err != nil {
			t.Fatalf("decode(%T): %v", c.v, err)
		}
		wb, gb := sortedMarshal(t, want), sortedMarshal(t, got)
		if !bytes.Equal(wb, gb) {
			t.Errorf("decode(%T) through a Reader: got %x, want %x", c.v, gb, wb)
		}
	}
}

// sortedMarshal encodes v with its maps' keys sorted, so that two equal
// values encode to the same bytes whatever the order of map iteration.
func sortedMarshal(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(v); err != nil {
		t.Fatalf("Marshal(%T): %v", v, err)
	}
	return buf.Bytes()
}

func TestRejects(t *testing.T) {
	nested := func(n int) []byte { return append(bytes.Repeat([]byte{0x91}, n), 0xc0) }
	cases := map[string][]byte{
		"empty":                {},
		"array32 of 2^31":      {0xdd, 0x80, 0, 0, 0, 0xc0},
		"array16 of 3, 2 left": {0xdc, 0, 3, 1, 2},
		"fixarray of 3":        {0x93, 1, 2},
		"map32 of 2^31":        {0xdf, 0x80, 0, 0, 0, 0xc0, 0xc0},
		"map of 2, 3 left":     {0x82, 1, 2, 3},
		"bin32 of 4 GiB":       {0xc6, 0xff, 0xff, 0xff, 0xff, 0},
		"str32 of 4 GiB":       {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},
		"fixstr cut short":     {0xa5, 'a', 'b'},
		"ext32 of 4 GiB":       {0xc9, 0xff, 0xff, 0xff, 0xff, 1, 0},
		"fixext16 cut short":   {0xd8, 1, 0, 0},
		"int64 cut short":      {0xd3, 0, 0},
		"header cut short":     {0xdd, 0, 0},
		"0xc1":                 {0xc1},
		"0xc1 in an array":     {0x92, 1, 0xc1},
		"nested past MaxDepth": nested(MaxDepth + 1),
		"deep into 2 MiB":      nested(2 << 20),
		"map32 in ext payload": {0xc7, 5, 1, 0xdf, 0xff, 0xff, 0xff},
	}
	for name, b := range cases {
		if name == "map32 in ext payload" {
			// Opaque to Check, and refused by the Reader (below).
			continue
		}
		if err := Check(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Check = %v, want ErrInvalid", name, err)
		}
		var r Reader
		if err := r.Reset(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Reset = %v, want ErrInvalid", name, err)
		}
	}
	if err := Check(nested(MaxDepth)); err != nil {
		t.Errorf("nested MaxDepth deep: %v", err)
	}
}

// TestReaderRefusesMapInExt is the bypass of a walk that does not know the
// decoder: msgpack's map decoder skips an extension's header and reads a
// map from its payload. Here an array holds a time whose payload begins
// with a map header, which begins an array claiming 2^25 elements.
func TestReaderRefusesMapInExt(t *testing.T) {
	b := []byte{0x92, 0xd6, 0xff, 0x8f, 0xa1, 'a', 0xdd, 0x02, 0x00, 0x00, 0x00}
	if err := Check(b); err != nil {
		t.Fatalf("Check: %v (the case needs bytes that pass)", err)
	}
	var v []map[string][]int64
	if err := decode(b, &v); !errors.Is(err, ErrInvalid) {
		t.Errorf("decode into []map[string][]int64: got %v, want ErrInvalid", err)
	}
	var tv []any
	if err := decode(b, &tv); err != nil {
		t.Errorf("decode into []any: %v", err)
	}
}

func TestReaderUnread(t *testing.T) {
	b := []byte{0x92, 0xd4, 5, 0x80, 0x01}
	var r Reader
	if err := r.Reset(b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []byte{0x92, 0xd4, 5} {
		if c, err := r.ReadByte(); err != nil || c != want {
			t.Fatalf("ReadByte = %x, %v; want %x", c, err, want)
		}
	}
	if _, err := r.ReadByte(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ReadByte at an extension's payload: %v, want ErrInvalid", err)
	}
	if err := r.UnreadByte(); err != nil {
		t.Fatal(err)
	}
	if c, err := r.ReadByte(); err != nil || c != 5 {
		t.Fatalf("ReadByte after UnreadByte = %x, %v; want 5", c, err)
	}
	p := make([]byte, 1)
	if n, err := r.Read(p); n != 1 || err != nil || p[0] != 0x80 {
		t.Fatalf("Read = %d, %v, %x; want the payload byte", n, err, p)
	}
	if c, err := r.ReadByte(); err != nil || c != 1 {
		t.Fatalf("ReadByte after the payload = %x, %v; want 1", c, err)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("ReadByte at the end: %v, want EOF", err)
	}
}

func FuzzCheck(f *testing.F) {
	for _, v := range goodValues() {
		if b, err := msgpack.Marshal(v); err == nil && len(b) < 4096 {
			f.Add(b)
		}
	}
	f.Add([]byte{0x92, 0xd6, 0xff, 0x8f, 0xa1, 'a', 0xdd, 0x02, 0x00, 0x00, 0x00})
	f.Add([]byte{0xdd, 0x80, 0, 0, 0, 0xc0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := Check(b); err != nil {
			return
		}
		// The decoder's own parser agrees with the check: it skips b's
		// values to the end.
		var r Reader
		if err := r.Reset(b); err != nil {
			t.Fatalf("Reset refuses what Check passes: %v", err)
		}
		d := msgpack.NewDecoder(&r)
		for r.i < len(b) {
			if err := d.Skip(); err != nil {
				t.Fatalf("Skip at %d of %x: %v", r.i, b, err)
			}
		}
	})
}
