package cache

import (
	"hash/maphash"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// plainArg has a scalar of every kind a plain argument may hold, and what
// argKey leaves out.
type plainArg struct {
	S     string
	B     bool
	I8    int8
	U16   uint16
	I32   int32
	I     int
	F32   float32
	F     float64
	C     complex64
	A     [2]string
	N     struct{ X float64 }
	_     int
	Note  string `cache:"-"`
	small uint8
}

// TestArgLayoutAgreesWithArgKey: a copy kept under an argument is found by
// an equal argument and by no other. Arguments drawn from small sets, so
// that many are equal, must be equal for the layout exactly when their key
// texts are equal, but for those holding a NaN, which the layout finds
// equal to nothing (they are kept under their key text); and equal
// arguments hash alike.
func TestArgLayoutAgreesWithArgKey(t *testing.T) {
	l := argLayoutOf(reflect.TypeFor[plainArg]())
	require.NotNil(t, l)
	seed := maphash.MakeSeed()
	floats := []float64{0, math.Copysign(0, -1), 1, math.Inf(1), math.NaN()}
	r := rand.New(rand.NewPCG(1, 2))
	pick := func() plainArg {
		f := func() float64 { return floats[r.IntN(len(floats))] }
		s := func() string { return []string{"", "a", "\xff", `"`}[r.IntN(4)] }
		return plainArg{
			S: s(), B: r.IntN(2) == 0, I8: int8(r.IntN(2) - 1), U16: uint16(r.IntN(2)) << 15, I32: int32(r.IntN(2)),
			I: r.IntN(2) - 1, F32: float32(f()), F: f(), C: complex(float32(f()), float32(f())),
			A: [2]string{s(), s()}, N: struct{ X float64 }{f()}, Note: s(), small: uint8(r.IntN(2)),
		}
	}
	hasNaN := func(a plainArg) bool {
		return a.F32 != a.F32 || a.F != a.F || real(a.C) != real(a.C) || imag(a.C) != imag(a.C) || a.N.X != a.N.X
	}
	equalSeen := 0
	for range 20000 {
		// b is a with one field drawn anew: often equal, often one apart.
		a, c := pick(), pick()
		b := a
		va, vc := reflect.ValueOf(&b).Elem(), reflect.ValueOf(&c).Elem()
		if i := r.IntN(va.NumField()); va.Type().Field(i).Name != "_" {
			f, g := va.Field(i), vc.Field(i)
			reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.NewAt(g.Type(), unsafe.Pointer(g.UnsafeAddr())).Elem())
		}
		ka, err := argKey("p:", a)
		require.NoError(t, err)
		kb, err := argKey("p:", b)
		require.NoError(t, err)
		eq := l.equal(unsafe.Pointer(&a), unsafe.Pointer(&b))
		if eq {
			equalSeen++
			require.Equal(t, ka, kb, "equal for the layout, different keys: %+v, %+v", a, b)
			require.Equal(t, l.hash(seed, unsafe.Pointer(&a)), l.hash(seed, unsafe.Pointer(&b)), "%+v, %+v", a, b)
		} else if ka == kb {
			require.True(t, hasNaN(a) || hasNaN(b), "one key, different for the layout: %+v, %+v", a, b)
		}
	}
	t.Logf("%d equal pairs", equalSeen)
	assert.Greater(t, equalSeen, 1000, "the test drew equal arguments")
}

func TestArgLayoutOnlyForPlainTypes(t *testing.T) {
	type withPtr struct{ P *int }
	type withTime struct{ T time.Time }
	type withIface struct{ V any }
	type withSlice struct{ S []int }
	type ignored struct {
		S string
		F func() `cache:"-"`
	}
	type myTime time.Time
	for _, typ := range []reflect.Type{
		reflect.TypeFor[*int](), reflect.TypeFor[[]int](), reflect.TypeFor[map[string]int](), reflect.TypeFor[any](),
		reflect.TypeFor[time.Time](), reflect.TypeFor[myTime](), reflect.TypeFor[withPtr](), reflect.TypeFor[withTime](),
		reflect.TypeFor[withIface](), reflect.TypeFor[withSlice](), reflect.TypeFor[chan int](), reflect.TypeFor[[maxArgParts + 1]int](),
	} {
		assert.Nil(t, argLayoutOf(typ), "%v", typ)
	}
	for _, typ := range []reflect.Type{
		reflect.TypeFor[string](), reflect.TypeFor[int](), reflect.TypeFor[struct{}](), reflect.TypeFor[[maxArgParts]int](),
		reflect.TypeFor[ignored](), reflect.TypeFor[complex128](),
	} {
		assert.NotNil(t, argLayoutOf(typ), "%v", typ)
	}
}
