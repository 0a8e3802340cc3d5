package cache

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/stockpot-go/cache/internal/msgpackcheck"
	"github.com/stockpot-go/cache/internal/testredis"
)

type selfRef struct {
	Name string
	Self *selfRef
}

type treeNode struct {
	Name   string      `json:"name"`
	Kids   []*treeNode `json:"kids"`
	Parent *treeNode   `json:"-"` // a back pointer the codecs leave out
	up     *treeNode
}

type listNode struct {
	V    int
	Next *listNode
}

func list(n int) *listNode {
	var l *listNode
	for i := range n {
		l = &listNode{V: i, Next: l}
	}
	return l
}

// ring refers to itself, but encodes itself as a plain list.
type ring struct {
	V    int
	Next *ring
}

func (r *ring) EncodeMsgpack(e *msgpack.Encoder) error { return e.EncodeInt(int64(r.V)) }
func (r *ring) DecodeMsgpack(d *msgpack.Decoder) error {
	v, err := d.DecodeInt()
	r.V = v
	return err
}
func (r *ring) MarshalJSON() ([]byte, error) { return []byte("1"), nil }
func (r *ring) UnmarshalJSON(b []byte) error { r.V = 1; return nil }

// tooDeep encodes itself as arrays nested deeper than Msgpack reads back.
type tooDeep struct{}

func (tooDeep) EncodeMsgpack(e *msgpack.Encoder) error {
	for range msgpackcheck.MaxDepth + 1 {
		if err := e.EncodeArrayLen(1); err != nil {
			return err
		}
	}
	return e.EncodeNil()
}

func TestEncodeRefusesCycles(t *testing.T) {
	s := &selfRef{Name: "a"}
	s.Self = s
	m := map[string]any{"a": 1}
	m["m"] = m
	sl := []any{1, nil}
	sl[1] = sl
	iface := &struct{ Any any }{}
	iface.Any = iface
	var p any
	p = &p
	cyclic := map[string]any{"pointer": s, "map": m, "slice": sl, "interface": iface, "pointer to interface": &p, "in a slice": []*selfRef{s}}
	for _, codec := range []Codec{Msgpack, JSON} {
		for name, v := range cyclic {
			_, err := codec.Marshal(v)
			require.Error(t, err, "%T %s", codec, name)
			if codec == Msgpack {
				assert.ErrorIs(t, err, errCyclic, name)
			}
		}
	}
}

func TestEncodeKeepsAcyclicValues(t *testing.T) {
	root := &treeNode{Name: "root"}
	for range 3 {
		kid := &treeNode{Name: "kid", Parent: root, up: root}
		kid.Kids = []*treeNode{{Name: "grandkid", Parent: kid, up: kid}}
		root.Kids = append(root.Kids, kid)
	}
	shared := &selfRef{Name: "shared"}
	r := &ring{V: 1}
	r.Next = r
	values := map[string]any{
		"back pointers the codec leaves out": root,
		"a pointer shared, not a cycle":      []*selfRef{shared, shared, {Self: shared}},
		"a struct and its first field":       &struct{ A selfRef }{A: selfRef{Name: "x"}},
		"a cycle under a custom encoder":     r,
		"deep, under the limit":              list(msgpackcheck.MaxDepth - 1),
		"time and interfaces":                map[string]any{"t": time.Now(), "n": []any{1, "x", nil}},
	}
	for _, codec := range []Codec{Msgpack, JSON} {
		for name, v := range values {
			b, err := codec.Marshal(v)
			require.NoError(t, err, "%T %s", codec, name)
			dst := reflect.New(reflect.TypeOf(v))
			require.NoError(t, codec.Unmarshal(b, dst.Interface()), "%T %s", codec, name)
		}
	}
}

func TestEncodeRefusesTooDeep(t *testing.T) {
	_, err := Msgpack.Marshal(list(msgpackcheck.MaxDepth + 1))
	assert.ErrorIs(t, err, errTooDeep)
	_, err = Msgpack.Marshal(tooDeep{})
	assert.ErrorIs(t, err, msgpackcheck.ErrInvalid)
	b, err := JSON.Marshal(list(5000))
	require.NoError(t, err)
	var l *listNode
	require.NoError(t, JSON.Unmarshal(b, &l))
	_, err = JSON.Marshal(list(jsonMaxDepth + 1))
	assert.ErrorIs(t, err, errTooDeep)
	// What encoding/json refuses to decode, whatever wrote it.
	deep := make([]byte, 0, 2*jsonMaxDepth+2)
	for range jsonMaxDepth + 1 {
		deep = append(deep, '[')
	}
	for range jsonMaxDepth + 1 {
		deep = append(deep, ']')
	}
	var v any
	assert.Error(t, JSON.Unmarshal(deep, &v))
}

func TestWalkOnlyOpenTypes(t *testing.T) {
	type flat struct {
		A []string
		M map[string]int
		T time.Time
		P *int
	}
	closed := []any{benchRow{}, []benchRow{}, flat{}, "", 0, map[string][]string{}, &ring{}, time.Time{}}
	open := []any{selfRef{}, &listNode{}, map[string]any{}, []any{}, treeNode{}, struct{ E error }{}}
	for _, v := range closed {
		assert.False(t, msgpackRules.walkOf(reflect.TypeOf(v)).open, "%T", v)
	}
	for _, v := range open {
		assert.True(t, jsonRules.walkOf(reflect.TypeOf(v)).open, "%T", v)
	}
	// error is encoded by msgpack as its message.
	assert.False(t, msgpackRules.walkOf(reflect.TypeOf(struct{ E error }{})).open)

	// Encodings of closed types are known to read back, unless they hold a
	// type that writes its own MessagePack.
	rows := msgpackRules.walkOf(reflect.TypeOf([]benchRow{}))
	assert.Equal(t, 3, rows.depth)
	assert.False(t, rows.check)
	assert.True(t, msgpackRules.walkOf(reflect.TypeOf(struct{ T tooDeep }{})).check)
	assert.True(t, msgpackRules.walkOf(reflect.TypeOf(map[string]any{})).check)
	// Nor those of what JSON decoders make.
	check, err := msgpackRules.walkEncodable(map[string]any{"a": []any{1, "x", nil, 2.5, map[string]any{}}})
	require.NoError(t, err)
	assert.False(t, check)
	check, err = msgpackRules.walkEncodable(map[string]any{"a": []any{tooDeep{}}})
	require.NoError(t, err)
	assert.True(t, check)
	_, err = Msgpack.Marshal(map[string]any{"a": []any{tooDeep{}}})
	assert.ErrorIs(t, err, msgpackcheck.ErrInvalid)
}

// TestSetCyclicValue: a Set of a value that refers to itself returns an
// error and writes nothing, with either codec.
func TestSetCyclicValue(t *testing.T) {
	testredis.Run(t, func(t *testing.T, b *testredis.Backend) {
		e := newEnv(t, b)
		s := &selfRef{Name: "a"}
		s.Self = s
		for _, codec := range []Codec{Msgpack, JSON} {
			m := e.manager(&Options{Codec: codec})
			err := m.Set(t.Context(), "self", s)
			require.Error(t, err)
			assert.False(t, errors.Is(err, ErrValueTooLarge))
			assert.ErrorContains(t, err, "cache: encode *cache.selfRef")
			_, err = Get[*selfRef](t.Context(), m, "self")
			assert.ErrorIs(t, err, ErrMiss)
		}
	})
}

// TestUncheckedEncodingsReadBack: the encodings Marshal does not check are
// those the check passes.
func TestUncheckedEncodingsReadBack(t *testing.T) {
	root := &treeNode{Name: "root", Kids: []*treeNode{{Name: "kid"}}}
	values := []any{
		benchPayload(), benchAnyPayload(), map[string]any{"a": []any{1, "x", nil, 2.5, map[string]any{}}},
		time.Now(), []time.Time{{}}, root, list(msgpackcheck.MaxDepth - 1), struct{ E error }{errors.New("x")},
		[3][2]int{}, map[[2]string][]byte{{"a", "b"}: []byte("c")}, &ring{V: 1}, []any{&ring{V: 2}},
	}
	for _, v := range values {
		check, err := msgpackRules.walkEncodable(v)
		require.NoError(t, err, "%T", v)
		b, err := Msgpack.Marshal(v)
		require.NoError(t, err, "%T", v)
		if !check {
			assert.NoError(t, msgpackcheck.Check(b), "%T", v)
		}
	}
}
