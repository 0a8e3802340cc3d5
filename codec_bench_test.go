package cache

import (
	"bytes"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// What checking bytes before decoding them costs: the codec on the
// benchmark payload against msgpack's decoder with the codec's settings.

func BenchmarkCodecUnmarshal(b *testing.B) {
	data, err := Msgpack.Marshal(benchPayload())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("raw-msgpack", func(b *testing.B) {
		// A reused decoder with the codec's settings, reading the bytes as
		// they come.
		d := msgpack.NewDecoder(nil)
		var r bytes.Reader
		b.ReportAllocs()
		for b.Loop() {
			r.Reset(data)
			d.Reset(&r)
			d.SetCustomStructTag("json")
			var v []benchRow
			if err := d.Decode(&v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stockpot", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v []benchRow
			if err := Msgpack.Unmarshal(data, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
