package cache

import (
	"context"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/testredis"
)

type summary struct {
	Outlets int               `json:"outlets"`
	Revenue float64           `json:"revenue"`
	Top     []string          `json:"top"`
	ByDay   map[string]int64  `json:"by_day"`
	Updated time.Time         `json:"updated"`
	Notes   map[string]string `json:"notes,omitempty"`
}

func sampleSummary() summary {
	return summary{
		Outlets: 42, Revenue: 123456.78, Top: []string{"mango", "pista"},
		ByDay:   map[string]int64{"mon": 10, "tue": 0},
		Updated: time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC),
	}
}

// assertSummary compares summaries, times by instant (codecs differ in the
// location they decode a time into).
func assertSummary(t *testing.T, want, got summary) {
	t.Helper()
	assert.True(t, want.Updated.Equal(got.Updated), "Updated: want %v, got %v", want.Updated, got.Updated)
	want.Updated, got.Updated = time.Time{}, time.Time{}
	assert.Equal(t, want, got)
}

func TestSetGet(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		m := e.manager(nil)
		ctx := t.Context()
		want := sampleSummary()
		require.NoError(t, m.Set(ctx, "dashboard_summary", want))

		var got summary
		require.NoError(t, m.Get(ctx, "dashboard_summary", &got))
		assertSummary(t, want, got)

		typed, err := Get[summary](ctx, m, "dashboard_summary")
		require.NoError(t, err)
		assertSummary(t, want, typed)

		_, err = Get[summary](ctx, m, "nope")
		assert.ErrorIs(t, err, ErrMiss)

		// A second Manager on another pool sees the same value.
		other, err := Get[summary](ctx, e.manager(nil), "dashboard_summary")
		require.NoError(t, err)
		assertSummary(t, want, other)

		st := m.Stats().ByName["keys"]
		assert.Equal(t, uint64(2), st.Hits)
		assert.Equal(t, uint64(1), st.Misses)
		assert.Equal(t, uint64(1), st.Sets)
	})
}

func TestZeroValuesAreHits(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		require.NoError(t, m.Set(ctx, "count", 0))
		require.NoError(t, m.Set(ctx, "name", ""))
		require.NoError(t, m.Set(ctx, "items", []string{}))
		require.NoError(t, m.Set(ctx, "struct", summary{}))

		n, err := Get[int](ctx, m, "count")
		require.NoError(t, err, "0 is a hit")
		assert.Equal(t, 0, n)
		s, err := Get[string](ctx, m, "name")
		require.NoError(t, err, `"" is a hit`)
		assert.Equal(t, "", s)
		items, err := Get[[]string](ctx, m, "items")
		require.NoError(t, err, "an empty slice is a hit")
		assert.Empty(t, items)
		z, err := Get[summary](ctx, m, "struct")
		require.NoError(t, err)
		assert.Equal(t, summary{}, z)
		assert.Equal(t, uint64(4), m.Stats().ByName["keys"].Hits)
	})
}

func TestGetManySetMany(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		require.NoError(t, SetMany(ctx, m, map[string]int{"a": 1, "b": 0, "c": 3}, TTL(time.Minute)))
		got, err := GetMany[int](ctx, m, "a", "b", "c", "missing")
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"a": 1, "b": 0, "c": 3}, got)

		// One value that does not encode: nothing is written.
		err = SetMany(ctx, m, map[string]any{"x": 1, "y": make(chan int)})
		require.Error(t, err)
		_, err = Get[int](ctx, m, "x")
		assert.ErrorIs(t, err, ErrMiss)

		require.NoError(t, m.Delete(ctx, "a", "c"))
		got, err = GetMany[int](ctx, m, "a", "b", "c")
		require.NoError(t, err)
		assert.Equal(t, map[string]int{"b": 0}, got)
	})
}

func TestBadInput(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(&Options{MaxValueSize: 1024, CompressAbove: -1})
		ctx := t.Context()
		rdb := m.Client()
		keyCount := func() int64 {
			n, err := rdb.DBSize(ctx).Result()
			require.NoError(t, err)
			return n
		}

		assert.ErrorIs(t, m.Set(ctx, "", 1), ErrInvalidKey)
		assert.ErrorIs(t, m.Get(ctx, "", new(int)), ErrInvalidKey)
		assert.ErrorIs(t, m.Delete(ctx, "ok", ""), ErrInvalidKey)
		_, err := m.TTL(ctx, "")
		assert.ErrorIs(t, err, ErrInvalidKey)
		_, err = GetMany[int](ctx, m, "a", "")
		assert.ErrorIs(t, err, ErrInvalidKey)
		assert.ErrorIs(t, SetMany(ctx, m, map[string]int{"": 1}), ErrInvalidKey)
		assert.ErrorIs(t, m.Set(ctx, "k", 1, TTL(0)), ErrInvalidOption)
		assert.ErrorIs(t, m.Set(ctx, "k", 1, TTL(-time.Second)), ErrInvalidOption)
		assert.ErrorIs(t, m.Set(ctx, "k", 1, Jitter(2)), ErrInvalidOption)
		assert.ErrorIs(t, m.Set(ctx, "k", 1, nil), ErrInvalidOption)

		err = m.Set(ctx, "big", strings.Repeat("x", 2000))
		assert.ErrorIs(t, err, ErrValueTooLarge)
		assert.Contains(t, err.Error(), "MaxValueSize is 1024")

		err = m.Set(ctx, "chan", make(chan int))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "chan int")

		err = m.Set(ctx, "func", func() {})
		require.Error(t, err)
		assert.Zero(t, keyCount(), "bad input wrote nothing")
	})
}

func TestCorruptBytesAreAMiss(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		rdb := m.Client()
		good := envelope.Append(nil, envelope.Header{WrittenAt: 1}, []byte{0xc1}) // 0xc1 is never valid msgpack
		for name, raw := range map[string][]byte{
			"text":         []byte("written by another program"),
			"json":         []byte(`{"outlets":3}`),
			"old version":  {envelope.Magic, 0, 0, 0, 0, 0, 0},
			"bad payload":  good,
			"bad compress": envelope.Append(nil, envelope.Header{Flags: envelope.Compressed}, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}),
			"empty":        {},
		} {
			require.NoError(t, rdb.Set(ctx, m.keyRef(name).key, raw, 0).Err())
			var s summary
			assert.ErrorIs(t, m.Get(ctx, name, &s), ErrMiss, name)
		}
		// Decodes into the wrong type: a miss too.
		require.NoError(t, m.Set(ctx, "str", "hello"))
		_, err := Get[summary](ctx, m, "str")
		assert.ErrorIs(t, err, ErrMiss)

		st := m.Stats().ByName["keys"]
		assert.Equal(t, uint64(7), st.DecodeErrors)
		assert.Equal(t, uint64(7), st.Misses)
	})
}

func TestCompression(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(&Options{CompressAbove: 100})
		ctx := t.Context()
		big := strings.Repeat("mango pista kulfi ", 500)
		require.NoError(t, m.Set(ctx, "big", big))
		n, err := m.Client().StrLen(ctx, m.keyRef("big").key).Result()
		require.NoError(t, err)
		assert.Less(t, n, int64(len(big)/4), "stored compressed")
		got, err := Get[string](ctx, m, "big")
		require.NoError(t, err)
		assert.Equal(t, big, got)

		// MaxValueSize applies after compression: 9 KB of text stored in far less.
		small := newEnv(t, b).manager(&Options{CompressAbove: 100, MaxValueSize: 2000})
		require.NoError(t, small.Set(ctx, "big", big))
	})
}

// TestCompressionDefault checks what the default CompressAbove stores: the
// benchmark payload compressed to less than a quarter, small values and
// values that do not shrink by an eighth as encoded; and that every
// setting reads what the others stored, as a Manager reads what the
// version before stored (compressed only above 64 KiB).
func TestCompressionDefault(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		env := newEnv(t, b)
		ctx := t.Context()
		byDefault := env.manager(nil)
		before := env.manager(&Options{CompressAbove: 64 << 10})
		off := env.manager(&Options{CompressAbove: -1})
		rows := benchPayload()
		// 3600 random bytes and 400 zeros: S2 saves a tenth.
		barely := make([]byte, 4000)
		_, _ = rand.NewChaCha8([32]byte{1}).Read(barely[:3600])
		values := map[string]any{
			"rows":    rows,
			"one row": rows[:1],                  // 101 bytes: below the threshold
			"short":   strings.Repeat("ab", 60),  // 122 bytes: below it too
			"repeats": strings.Repeat("ab", 100), // compresses
			"barely":  barely,                    // S2 would not save an eighth
			"zero":    0,
		}
		compressedByDefault := map[string]bool{"rows": true, "repeats": true}
		stored := func(m *Manager, key string) (envelope.Header, int) {
			t.Helper()
			raw, err := m.Client().Get(ctx, m.keyRef(key).key).Bytes()
			require.NoError(t, err, key)
			h, _, err := envelope.Decode(raw)
			require.NoError(t, err, key)
			return h, len(raw)
		}
		for _, w := range []*Manager{byDefault, before, off} {
			for key, v := range values {
				require.NoError(t, w.Set(ctx, key, v), key)
				h, _ := stored(w, key)
				want := w == byDefault && compressedByDefault[key]
				assert.Equal(t, want, h.Flags&envelope.Compressed != 0, "%s compressed, CompressAbove %d", key, w.opts.CompressAbove)
				for _, r := range []*Manager{byDefault, before, off} {
					got := reflect.New(reflect.TypeOf(v))
					require.NoError(t, r.Get(ctx, key, got.Interface()), "%s written with CompressAbove %d, read with %d", key, w.opts.CompressAbove, r.opts.CompressAbove)
					assert.Equal(t, v, got.Elem().Interface(), key)
				}
			}
		}
		require.NoError(t, byDefault.Set(ctx, "rows", rows))
		_, n := stored(byDefault, "rows")
		raw, err := Msgpack.Marshal(rows)
		require.NoError(t, err)
		assert.Less(t, n, len(raw)/4, "the benchmark payload stored compressed")
	})
}

func TestJSONCodec(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(&Options{Codec: JSON})
		ctx := t.Context()
		require.NoError(t, m.Set(ctx, "s", sampleSummary()))
		raw, err := m.Client().Get(ctx, m.keyRef("s").key).Bytes()
		require.NoError(t, err)
		_, payload, err := envelope.Decode(raw)
		require.NoError(t, err)
		assert.Contains(t, string(payload), `"outlets":42`)
		got, err := Get[summary](ctx, m, "s")
		require.NoError(t, err)
		assertSummary(t, sampleSummary(), got)
	})
}

func TestClosed(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		m := newEnv(t, b).manager(nil)
		ctx := t.Context()
		closeWithin(t, m)
		closeWithin(t, m) // Close is idempotent
		assert.ErrorIs(t, m.Set(ctx, "k", 1), ErrClosed)
		assert.ErrorIs(t, m.Get(ctx, "k", new(int)), ErrClosed)
		assert.ErrorIs(t, m.Delete(ctx, "k"), ErrClosed)
		_, err := GetOrLoad(ctx, m, "k", func(ctx context.Context) (int, error) { return 1, nil })
		assert.ErrorIs(t, err, ErrClosed)
		_, err = NewHash[int](m, "h").Get(ctx, "f")
		assert.ErrorIs(t, err, ErrClosed)
	})
}

func TestNewOptions(t *testing.T) {
	_, rdb := testredis.Mini(t)
	_, err := New(nil, nil)
	assert.ErrorIs(t, err, ErrInvalidOption)
	_, err = New(rdb, &Options{Prefix: "a{b}"})
	assert.ErrorIs(t, err, ErrInvalidKey)
	_, err = New(rdb, &Options{Jitter: 1.5})
	assert.ErrorIs(t, err, ErrInvalidOption)

	opts := &Options{Prefix: "scoopjoy"}
	m, err := New(rdb, opts)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	assert.Equal(t, Options{Prefix: "scoopjoy"}, *opts, "New does not change the caller's Options")
	assert.Equal(t, "scoopjoy:kitchen_queue", m.Key("kitchen_queue"))
	assert.Equal(t, time.Hour, m.opts.DefaultTTL)
	assert.Same(t, rdb, m.Client().(*redis.Client))

	d, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, d) })
	assert.Equal(t, "stockpot:x", d.Key("x"))
}

func TestKeysAreDistinct(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, nil)
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	seen := map[string]string{}
	add := func(what, key string) {
		if prev, ok := seen[key]; ok {
			t.Errorf("%s and %s share the key %q", prev, what, key)
		}
		seen[key] = what
	}
	for _, k := range []string{"a", "a}", "a}:l", "a%7D", "%", "}", "{", "a:l"} {
		r := m.keyRef(k).withLease()
		add("key "+k, r.key)
		add("lease of key "+k, r.lease)
		h := NewHash[int](m, k)
		add("hash "+k, h.key)
		add("gen of hash "+k, h.gen)
		for _, f := range []string{"f", "f}", "}"} {
			add("lease of hash "+k+" field "+f, h.ref(f).withLease().lease)
		}
	}
	// Each key and its lease hash to one slot: the tag ends at our brace.
	for _, k := range []string{"a}b", "}", "x{y}z"} {
		r := m.keyRef(k).withLease()
		assert.Equal(t, hashTag(r.key), hashTag(r.lease), k)
	}
}
