package cache

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// key returns a's key text under the prefix "p:", failing t on an error.
func key[A any](t testing.TB, a A) string {
	t.Helper()
	k, err := argKey("p:", a)
	require.NoError(t, err, "argKey(%T)", a)
	return k
}

type strArg struct{ S string }

func TestArgKeyText(t *testing.T) {
	type inner struct {
		B  []byte
		F  float32
		C  complex128
		ok bool
	}
	type withTags struct {
		Name  string
		Cache map[string]int `cache:"-"`
		_     int
	}
	i := 7
	cases := []struct {
		got  string
		want string
	}{
		{key(t, "Mumbai"), "p:s:Mumbai"},
		{key(t, 42), "p:i:42"},
		{key(t, int64(-42)), "p:i:-42"},
		{key(t, struct{}{}), "p:_"},
		{key(t, query{Region: "Mumbai", Limit: 20}), `p:v:{Region:"Mumbai",Limit:20}`},
		{key(t, strArg{"\xff"}), `p:v:{S:"\xff"}`},
		{key(t, inner{B: []byte("a\x00"), F: 0.1, C: complex(-1, math.Inf(1)), ok: true}), `p:v:{B:"a\x00",F:0.1,C:(-1,+Inf),ok:true}`},
		{key(t, withTags{Name: "x", Cache: map[string]int{"a": 1}}), `p:v:{Name:"x"}`},
		{key(t, map[string]int{"b": 2, "a": 1}), `p:v:{"a":1,"b":2}`},
		{key(t, []float64{math.Copysign(0, -1), math.NaN(), 1e21, -1.5}), `p:v:[0,NaN,1e+21,-1.5]`},
		{key(t, [2]*int{nil, &i}), `p:v:[nil,&7]`},
		{key(t, time.Date(2026, 3, 1, 17, 30, 0, 500000000, time.FixedZone("IST", 5*3600+1800))), `p:v:2026-03-01T12:00:00.5Z`},
		{key(t, time.Unix(-1e12, 5)), `p:v:@-1000000000000.000000005`},
		{key(t, []any{nil, 5, int64(5), "5", query{}}), `p:v:[nil,int(5),int64(5),string("5"),github.com/stockpot-go/cache.query({Region:"",Limit:0})]`},
		{key(t, any("Mumbai")), `p:v:string("Mumbai")`},
		{key(t, any(42)), `p:v:int(42)`},
		{key(t, uint8(200)), `p:v:200`},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, c.got)
	}
	long := key(t, strings.Repeat("x", maxPlainArg+1))
	assert.True(t, strings.HasPrefix(long, "p:vh:"), long)
	assert.Len(t, long, len("p:vh:")+43)
}

func TestArgKeyEqualAndDifferent(t *testing.T) {
	ist := time.FixedZone("IST", 5*3600+1800)
	now := time.Now() // with a monotonic reading
	zero, one := 0, 1
	zero2 := 0
	type named string
	type pt struct {
		X  int
		ok bool
	}
	equal := [][2]string{
		{key(t, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)), key(t, time.Date(2026, 3, 1, 17, 30, 0, 0, ist))},
		{key(t, now), key(t, now.Round(0))},
		{key(t, now), key(t, now.In(ist))},
		{key(t, map[string]int(nil)), key(t, map[string]int{})},
		{key(t, []string(nil)), key(t, []string{})},
		{key(t, []byte(nil)), key(t, []byte{})},
		{key(t, 0.0), key(t, math.Copysign(0, -1))},
		{key(t, math.NaN()), key(t, math.Float64frombits(0x7ff8000000000001))},
		{key(t, &zero), key(t, &zero2)},
		{key(t, strArg{strings.Repeat("é", 100)}), key(t, strArg{strings.Repeat("é", 100)})},
	}
	for i, c := range equal {
		assert.Equal(t, c[0], c[1], "equal pair %d", i)
	}
	different := [][2]string{
		{key(t, strArg{"\xff"}), key(t, strArg{"\xfe"})},
		{key(t, strArg{"\xff" + strings.Repeat("x", 200)}), key(t, strArg{"\xfe" + strings.Repeat("x", 200)})},
		{key(t, strArg{"\ufffd"}), key(t, strArg{"\xff"})},
		{key(t, (*int)(nil)), key(t, &zero)},
		{key(t, &zero), key(t, &one)},
		{key(t, any(5)), key(t, any(int64(5)))},
		{key(t, any("x")), key(t, any(named("x")))},
		{key(t, any(nil)), key(t, any((*int)(nil)))},
		{key(t, pt{X: 1}), key(t, pt{X: 1, ok: true})},
		{key(t, []string{"a,b"}), key(t, []string{"a", "b"})},
		{key(t, map[string]string{"a": "b:c"}), key(t, map[string]string{"a:b": "c"})},
		{key(t, "s:x"), key(t, "x")},
		{key(t, time.Unix(0, 1)), key(t, time.Unix(0, 0))},
	}
	for i, c := range different {
		assert.NotEqual(t, c[0], c[1], "different pair %d", i)
	}
}

func TestArgKeyRefuses(t *testing.T) {
	type node struct {
		Next *node
		V    int
	}
	cyc := &node{}
	cyc.Next = cyc
	loop := make([]any, 1)
	loop[0] = loop
	m := map[string]any{}
	m["m"] = m
	deep := any(nil)
	for range maxArgDepth {
		deep = []any{deep}
	}
	type withFunc struct{ F func() }
	type withChan struct{ C chan int }
	cases := map[string]func() error{
		"func":           func() error { _, err := argKey("p:", withFunc{}); return err },
		"chan":           func() error { _, err := argKey("p:", withChan{}); return err },
		"unsafe pointer": func() error { _, err := argKey("p:", unsafe.Pointer(nil)); return err },
		"NaN map keys":   func() error { _, err := argKey("p:", map[float64]int{math.NaN(): 1, math.NaN(): 2}); return err },
		"zone map keys": func() error {
			u := time.Unix(5, 0)
			_, err := argKey("p:", map[time.Time]int{u: 1, u.In(time.FixedZone("X", 3600)): 2})
			return err
		},
		"deep": func() error { _, err := argKey("p:", deep); return err },
	}
	for name, f := range cases {
		err := f()
		assert.ErrorIs(t, err, ErrInvalidKey, name)
	}
	for name, a := range map[string]any{"pointer cycle": cyc, "slice cycle": loop, "map cycle": m} {
		_, err := argKey("p:", a)
		assert.ErrorIs(t, err, errCyclic, name)
		assert.ErrorIs(t, err, ErrInvalidKey, name)
	}
	// Two types written alike.
	f := func() any { type T int; return T(1) }
	g := func() any { type T int; return T(1) }
	_, err := argKey("p:", f())
	require.NoError(t, err)
	_, err = argKey("p:", g())
	assert.ErrorIs(t, err, ErrInvalidKey)
}

// TestMemoArgumentsThatCollided: with arguments encoded as JSON, these
// shared an entry, and the second call returned the first one's result.
func TestMemoArgumentsThatCollided(t *testing.T) {
	_, rdb := testredis.Mini(t)
	m, err := New(rdb, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, m) })
	ctx := t.Context()
	echo := Memoize(m, "echo", func(ctx context.Context, a strArg) (string, error) { return a.S, nil })
	for _, s := range []string{"\xff", "\xfe", "\ufffd", "\xff" + strings.Repeat("x", 200), "\xfe" + strings.Repeat("x", 200)} {
		got, err := echo.Get(ctx, strArg{s})
		require.NoError(t, err)
		assert.Equal(t, s, got)
	}
	_, err = echo.Key(strArg{"a"})
	require.NoError(t, err)
	type bad struct{ F func() }
	memo := Memoize(m, "bad", func(ctx context.Context, a bad) (int, error) { return 1, nil })
	_, err = memo.Get(ctx, bad{})
	assert.ErrorIs(t, err, ErrInvalidKey)
}

// fuzzArg is the struct the injectivity fuzz target builds pairs of.
type fuzzArg struct {
	S    string
	B    []byte
	F    float64
	F32  float32
	M    map[string]int
	P    *int64
	T    time.Time
	I    any
	u    uint16
	Skip int `cache:"-"`
}

// argEqual is "equal" as the README defines it, for the types the fuzz
// target builds, written out without reflection.
func argEqual(a, b any) bool {
	switch x := a.(type) {
	case fuzzArg:
		y := b.(fuzzArg)
		return x.S == y.S && bytes.Equal(x.B, y.B) && floatEq(x.F, y.F) && floatEq(float64(x.F32), float64(y.F32)) &&
			argEqual(x.M, y.M) && argEqual(x.P, y.P) && x.T.Equal(y.T) && anyEqual(x.I, y.I) && x.u == y.u
	case string:
		return x == b.(string)
	case int:
		return x == b.(int)
	case []byte:
		return bytes.Equal(x, b.([]byte))
	case float64:
		return floatEq(x, b.(float64))
	case map[string]int:
		y := b.(map[string]int)
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || w != v {
				return false
			}
		}
		return true
	case *int64:
		y := b.(*int64)
		return x == nil && y == nil || x != nil && y != nil && *x == *y
	case time.Time:
		return x.Equal(b.(time.Time))
	case []any:
		y := b.([]any)
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !anyEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	panic("argEqual: unexpected type")
}

// anyEqual compares two interface values: same dynamic type, equal values.
func anyEqual(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case int, int64, string, uint16:
		return a == b
	case float64, []byte, *int64, time.Time:
		if !sameType(a, b) {
			return false
		}
		return argEqual(x, b)
	}
	panic("anyEqual: unexpected type")
}

func sameType(a, b any) bool {
	switch a.(type) {
	case float64:
		_, ok := b.(float64)
		return ok
	case []byte:
		_, ok := b.([]byte)
		return ok
	case *int64:
		_, ok := b.(*int64)
		return ok
	case time.Time:
		_, ok := b.(time.Time)
		return ok
	}
	return false
}

func floatEq(a, b float64) bool { return a == b || a != a && b != b }

// fuzzParts are the primitive inputs a fuzzed value is built from.
type fuzzParts struct {
	s string
	b []byte
	x uint64
	y int64
}

var fuzzEpoch = time.Now() // with a monotonic reading

// build returns the value of the kind-th type made from p. When from is not
// nil, the fields whose bit is set in mask are taken from from instead,
// changed in a way that keeps them equal (another zone, -0 for 0, a NaN
// of other bits, an empty slice for nil, a copy of a pointer's target).
func (p fuzzParts) build(kind uint8, mask uint16, from *fuzzParts) any {
	q := p
	if from != nil {
		q = *from
	}
	pick := func(bit int) fuzzParts {
		if from != nil && mask&(1<<bit) != 0 {
			return q
		}
		return p
	}
	equalVariant := from != nil && mask&(1<<15) != 0
	str := func(src fuzzParts) string { return src.s }
	byts := func(src fuzzParts) []byte {
		if len(src.b) == 0 && equalVariant {
			if src.b == nil {
				return []byte{}
			}
			return nil
		}
		return bytes.Clone(src.b)
	}
	flt := func(src fuzzParts) float64 {
		f := math.Float64frombits(src.x)
		switch {
		case equalVariant && f == 0:
			return -f
		case equalVariant && math.IsNaN(f):
			return math.Float64frombits(src.x ^ 1 | 0x7ff0000000000001)
		}
		return f
	}
	mp := func(src fuzzParts) map[string]int {
		if len(src.s) == 0 {
			if equalVariant {
				return map[string]int{}
			}
			return nil
		}
		m := map[string]int{}
		for i, k := range strings.Split(src.s, "/") {
			m[k] = int(src.y) + i%2
		}
		return m
	}
	ptr := func(src fuzzParts) *int64 {
		if src.x&1 == 0 {
			return nil
		}
		v := src.y
		return &v
	}
	tm := func(src fuzzParts) time.Time {
		t := fuzzEpoch.Add(time.Duration(src.y))
		if src.x&2 != 0 {
			t = time.Unix(src.y%(1<<40), int64(src.x%1e9))
		}
		if equalVariant {
			return t.Round(0).In(time.FixedZone("Z", int(src.x%50000)))
		}
		return t
	}
	iface := func(src fuzzParts) any {
		switch src.x % 7 {
		case 0:
			return nil
		case 1:
			return int(src.y)
		case 2:
			return src.y
		case 3:
			return src.s
		case 4:
			return flt(src)
		case 5:
			return byts(src)
		default:
			return ptr(fuzzParts{x: 1, y: src.y})
		}
	}
	switch kind % 9 {
	case 0:
		return fuzzArg{
			S: str(pick(0)), B: byts(pick(1)), F: flt(pick(2)), F32: float32(flt(pick(3))), M: mp(pick(4)),
			P: ptr(pick(5)), T: tm(pick(6)), I: iface(pick(7)), u: uint16(pick(8).y), Skip: int(p.y),
		}
	case 1:
		return str(pick(0))
	case 2:
		return int(pick(0).y)
	case 3:
		return byts(pick(0))
	case 4:
		return flt(pick(0))
	case 5:
		return mp(pick(0))
	case 6:
		return ptr(pick(0))
	case 7:
		return tm(pick(0))
	default:
		return []any{iface(pick(0)), iface(pick(1))}
	}
}

// keyOf returns v's key as its own type, as a Memo of that type makes it.
func keyOf(t *testing.T, v any) string {
	var k string
	var err error
	switch x := v.(type) {
	case fuzzArg:
		k, err = argKey("p:", x)
	case string:
		k, err = argKey("p:", x)
	case int:
		k, err = argKey("p:", x)
	case []byte:
		k, err = argKey("p:", x)
	case float64:
		k, err = argKey("p:", x)
	case map[string]int:
		k, err = argKey("p:", x)
	case *int64:
		k, err = argKey("p:", x)
	case time.Time:
		k, err = argKey("p:", x)
	case []any:
		k, err = argKey("p:", x)
	}
	if err != nil {
		t.Fatalf("argKey(%#v): %v", v, err)
	}
	return k
}

// FuzzArgKeyInjective checks that two arguments of one type get one key
// exactly when they are equal.
func FuzzArgKeyInjective(f *testing.F) {
	f.Add(uint8(0), uint16(0), "\xff", "\xfe", []byte("a"), []byte("a"), uint64(0), uint64(1<<63), int64(1), int64(1))
	f.Add(uint8(0), uint16(0xffff), "a/b", "a", []byte{}, []byte(nil), math.Float64bits(math.NaN()), uint64(3), int64(-5), int64(7))
	f.Add(uint8(1), uint16(0), strings.Repeat("x", 97), strings.Repeat("x", 96)+"y", []byte(nil), []byte(nil), uint64(0), uint64(0), int64(0), int64(0))
	f.Add(uint8(7), uint16(0x8001), "", "", []byte(nil), []byte(nil), uint64(7), uint64(9), int64(1700000000), int64(1700000000))
	f.Add(uint8(8), uint16(0x8000), "5", "5", []byte("5"), []byte("5"), uint64(1), uint64(2), int64(5), int64(5))
	f.Add(uint8(5), uint16(0), "k/l", "l/k", []byte(nil), []byte(nil), uint64(0), uint64(0), int64(2), int64(2))
	f.Fuzz(func(t *testing.T, kind uint8, mask uint16, s1, s2 string, b1, b2 []byte, x1, x2 uint64, y1, y2 int64) {
		p1 := fuzzParts{s: s1, b: b1, x: x1, y: y1}
		p2 := fuzzParts{s: s2, b: b2, x: x2, y: y2}
		v1 := p1.build(kind, 0, nil)
		v2 := p2.build(kind, mask, &p1)
		k1, k2 := keyOf(t, v1), keyOf(t, v2)
		if eq := argEqual(v1, v2); eq != (k1 == k2) {
			t.Fatalf("equal %v, but keys %q and %q\n%#v\n%#v", eq, k1, k2, v1, v2)
		}
	})
}
