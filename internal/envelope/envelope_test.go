package envelope

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		h       Header
		payload []byte
	}{
		{Header{}, nil},
		{Header{WrittenAt: 1700000000123, FreshUntil: 1700000060123, LoadDuration: 52000, Gen: 7}, []byte("hello")},
		{Header{Flags: Compressed, WrittenAt: 1}, bytes.Repeat([]byte{0xff}, 1000)},
		{Header{Flags: Negative, WrittenAt: 1 << 50}, nil},
		{Header{Flags: Tagged, WrittenAt: 9, Tags: AppendTag(AppendTag(nil, "sales", 1<<63), "", 0)}, []byte("tagged")},
		{Header{Flags: Tagged | Negative, Tags: AppendTag(nil, "t", 5)}, nil},
	}
	for _, c := range cases {
		b := Append(nil, c.h, c.payload)
		h, p, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Append(%+v)): %v", c.h, err)
		}
		if !sameHeader(h, c.h) {
			t.Errorf("header: got %+v, want %+v", h, c.h)
		}
		if n := HeaderLen(c.h); n != len(b)-len(c.payload) {
			t.Errorf("HeaderLen(%+v) = %d, want %d", c.h, n, len(b)-len(c.payload))
		}
		if !bytes.Equal(p, c.payload) {
			t.Errorf("payload: got %q, want %q", p, c.payload)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := Append(nil, Header{WrittenAt: 5, Gen: 1}, []byte("x"))
	bad := map[string][]byte{
		"empty":                 nil,
		"plain text":            []byte(`{"a":1}`),
		"msgpack":               {0x81, 0xa1, 'a', 0x01},
		"only magic":            {Magic},
		"old version":           append([]byte{Magic, 0, 0}, good[3:]...),
		"future version":        append([]byte{Magic, 2, 0}, good[3:]...),
		"unknown flag":          append([]byte{Magic, Version, 0x80}, good[3:]...),
		"truncated":             good[:4],
		"negative with payload": Append(nil, Header{Flags: Negative}, []byte("x")),
		"empty tags":            {Magic, Version, byte(Tagged), 0, 0, 0, 0, 0},
		"tags past the end":     {Magic, Version, byte(Tagged), 0, 0, 0, 0, 9, 1},
		"tag name past the end": {Magic, Version, byte(Tagged), 0, 0, 0, 0, 2, 5, 'a'},
		"tag without its gen":   {Magic, Version, byte(Tagged), 0, 0, 0, 0, 2, 1, 'a'},
	}
	for name, b := range bad {
		if _, _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: got err %v, want ErrCorrupt", name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Append(nil, Header{WrittenAt: 1700000000000, FreshUntil: 1, LoadDuration: 2, Gen: 3}, []byte("payload")))
	f.Add(Append(nil, Header{Flags: Negative}, nil))
	f.Add([]byte{Magic, Version, 0xff, 0xff, 0xff})
	f.Add([]byte("not an envelope"))
	f.Add(Append(nil, Header{Tags: AppendTag(nil, "sales", 7)}, []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := Decode(b)
		if err != nil {
			return
		}
		// A decoded envelope re-encodes to the same bytes when its varints
		// were minimal; in every case it decodes again to the same header.
		again := Append(nil, h, p)
		h2, p2, err := Decode(again)
		if err != nil || !sameHeader(h2, h) || !bytes.Equal(p2, p) {
			t.Fatalf("re-encoding %x: got %+v %q %v, want %+v %q", b, h2, p2, err, h, p)
		}
	})
}

func sameHeader(a, b Header) bool {
	return a.Flags == b.Flags && a.WrittenAt == b.WrittenAt && a.FreshUntil == b.FreshUntil &&
		a.LoadDuration == b.LoadDuration && a.Gen == b.Gen && bytes.Equal(a.Tags, b.Tags)
}

func TestTags(t *testing.T) {
	tags := AppendTag(AppendTag(nil, "sales", 42), "outlet:7", 1<<40)
	var names []string
	var gens []uint64
	for rest := tags; len(rest) > 0; {
		name, gen, r, ok := NextTag(rest)
		if !ok {
			t.Fatalf("NextTag(%x) failed", rest)
		}
		names, gens, rest = append(names, string(name)), append(gens, gen), r
	}
	if len(names) != 2 || names[0] != "sales" || names[1] != "outlet:7" || gens[0] != 42 || gens[1] != 1<<40 {
		t.Errorf("got %q %v", names, gens)
	}
}
