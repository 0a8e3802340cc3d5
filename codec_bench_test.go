package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

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

// uncheckedMsgpack is the Msgpack codec as it was before it checked
// anything: it neither checks bytes before decoding them nor walks values
// before encoding them. It is the baseline of BenchmarkChecks.
type uncheckedMsgpack struct{}

// uncheckedDecoder is msgpackDecoder with a bytes.Reader.
type uncheckedDecoder struct {
	dec *msgpack.Decoder
	r   bytes.Reader
}

var uncheckedDecoders = sync.Pool{New: func() any {
	d := &uncheckedDecoder{dec: msgpack.NewDecoder(nil)}
	d.dec.SetCustomStructTag("json")
	return d
}}

func (uncheckedMsgpack) Marshal(v any) ([]byte, error) {
	e := msgpackEncoders.Get().(*msgpack.Encoder)
	defer msgpackEncoders.Put(e)
	var buf bytes.Buffer
	e.Reset(&buf)
	e.SetCustomStructTag("json")
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (uncheckedMsgpack) Unmarshal(data []byte, v any) error {
	d := uncheckedDecoders.Get().(*uncheckedDecoder)
	d.r.Reset(data)
	d.dec.Reset(&d.r)
	d.dec.SetCustomStructTag("json")
	err := d.dec.Decode(v)
	d.r.Reset(nil)
	uncheckedDecoders.Put(d)
	return err
}

// jsonArgKey is how memo arguments were encoded before argKey: their JSON,
// or its hash. It is the baseline of BenchmarkChecks/memo-key.
func jsonArgKey(prefix string, a any) (string, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return "", err
	}
	if len(b) <= maxPlainArg {
		return prefix + "j:" + string(b), nil
	}
	sum := sha256.Sum256(b)
	return prefix + "h:" + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// BenchmarkChecks measures what the checks cost, interleaved with their
// baseline so that both see the same machine: each iteration runs the
// baseline and the checked operation once, in turns first, and the
// benchmark reports the median of each and their ratio (checked/base).
// The baselines are uncheckedMsgpack (a Manager on it, for Get and Set)
// and jsonArgKey.
func BenchmarkChecks(b *testing.B) {
	_, rdb, m := benchSetup(b)
	base, err := New(rdb, &Options{Prefix: "bench", Codec: uncheckedMsgpack{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeWithin(b, base) })
	ctx := context.Background()
	rows, anys := benchPayload(), benchAnyPayload()
	data, err := Msgpack.Marshal(rows)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Set(ctx, "dashboard", rows); err != nil {
		b.Fatal(err)
	}
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	get := func(m *Manager) func() {
		return func() { _, err := Get[[]benchRow](ctx, m, "dashboard"); must(err) }
	}
	set := func(m *Manager, v any) func() {
		return func() { must(m.Set(ctx, "set", v)) }
	}
	unmarshal := func(c Codec) func() {
		return func() { var v []benchRow; must(c.Unmarshal(data, &v)) }
	}
	marshal := func(c Codec, v any) func() {
		return func() { _, err := c.Marshal(v); must(err) }
	}
	q := query{Region: "Mumbai", Limit: 20}
	for _, c := range []struct {
		name          string
		base, checked func()
	}{
		{"get-hit", get(base), get(m)},
		{"set/structs", set(base, rows), set(m, rows)},
		{"set/interfaces", set(base, anys), set(m, anys)},
		{"unmarshal", unmarshal(uncheckedMsgpack{}), unmarshal(Msgpack)},
		{"marshal/structs", marshal(uncheckedMsgpack{}, rows), marshal(Msgpack, rows)},
		{"marshal/interfaces", marshal(uncheckedMsgpack{}, anys), marshal(Msgpack, anys)},
		{"memo-key", func() { _, err := jsonArgKey("p:", q); must(err) }, func() { _, err := argKey("p:", q); must(err) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			var tb, tc []time.Duration
			i := 0
			for b.Loop() {
				first, second, t1, t2 := c.base, c.checked, &tb, &tc
				if i%2 == 1 {
					first, second, t1, t2 = c.checked, c.base, &tc, &tb
				}
				i++
				t0 := time.Now()
				first()
				t := time.Now()
				second()
				*t1 = append(*t1, t.Sub(t0))
				*t2 = append(*t2, time.Since(t))
			}
			mb, mc := median(tb), median(tc)
			b.ReportMetric(float64(mb.Nanoseconds()), "base-ns")
			b.ReportMetric(float64(mc.Nanoseconds()), "checked-ns")
			b.ReportMetric(float64(mc)/float64(mb), "checked/base")
		})
	}
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}
