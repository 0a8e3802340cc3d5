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
	}
	for _, c := range cases {
		b := Append(nil, c.h, c.payload)
		h, p, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Append(%+v)): %v", c.h, err)
		}
		if h != c.h {
			t.Errorf("header: got %+v, want %+v", h, c.h)
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
	f.Fuzz(func(t *testing.T, b []byte) {
		h, p, err := Decode(b)
		if err != nil {
			return
		}
		// A decoded envelope re-encodes to the same bytes when its varints
		// were minimal; in every case it decodes again to the same header.
		again := Append(nil, h, p)
		h2, p2, err := Decode(again)
		if err != nil || h2 != h || !bytes.Equal(p2, p) {
			t.Fatalf("re-encoding %x: got %+v %q %v, want %+v %q", b, h2, p2, err, h, p)
		}
	})
}
