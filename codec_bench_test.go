package cache

import (
	"bytes"
	"context"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// What checking bytes before decoding them, and walking values that can
// hold a cycle before encoding them, cost: the codecs on the benchmark
// payload against msgpack's own Marshal and Unmarshal, and Set against a
// raw SET of msgpack's encoding.

// benchAnyPayload is the benchmark payload as a program that reads JSON
// into interfaces holds it: a value the encoder walks for cycles.
func benchAnyPayload() []any {
	rows := benchPayload()
	out := make([]any, len(rows))
	for i, r := range rows {
		items := make([]any, len(r.Items))
		for j, it := range r.Items {
			items[j] = it
		}
		out[i] = map[string]any{
			"id": r.ID, "outlet": r.Outlet, "revenue": r.Revenue, "orders": r.Orders,
			"items": items, "tags": map[string]any{"region": r.Tags["region"]},
		}
	}
	return out
}

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

func BenchmarkCodecMarshal(b *testing.B) {
	for _, p := range []struct {
		name string
		v    any
	}{{"structs", benchPayload()}, {"interfaces", benchAnyPayload()}} {
		b.Run(p.name+"/raw-msgpack", func(b *testing.B) {
			e := msgpack.NewEncoder(nil)
			b.ReportAllocs()
			for b.Loop() {
				var buf bytes.Buffer
				e.Reset(&buf)
				e.SetCustomStructTag("json")
				if err := e.Encode(p.v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(p.name+"/stockpot", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Msgpack.Marshal(p.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSet(b *testing.B) {
	_, rdb, m := benchSetup(b)
	ctx := context.Background()
	for _, p := range []struct {
		name string
		v    any
	}{{"structs", benchPayload()}, {"interfaces", benchAnyPayload()}} {
		b.Run(p.name+"/raw-go-redis", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				data, err := msgpack.Marshal(p.v)
				if err != nil {
					b.Fatal(err)
				}
				if err := rdb.Set(ctx, "raw", data, 0).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(p.name+"/stockpot", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := m.Set(ctx, "dashboard", p.v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
