package cache

import (
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/stockpot-go/cache/internal/msgpackcheck"
)

// A codec's encoder recurses into a value as deep as the value goes: a
// value that refers to itself makes it recurse until the stack overflows,
// which kills the process (MessagePack), and a value nested deeper than the
// decoder accepts is written but never read back. So before a codec encodes
// a value, walkEncodable walks it, looking for both.
//
// The walk is cheap because most values need none. Only a type that can
// reach itself (through pointers, maps, slices or struct fields) or that
// holds an interface can hold a cycle or nest without bound; for any other
// type the walk is one lookup in a sync.Map. Values of the types that can
// are walked the way the codec walks them (the fields it encodes, stopping
// at types it encodes with their own methods), tracking the pointers, maps
// and slices on the current path once the path is deeper than trackAfter.
//
// The same analysis tells Msgpack when its encoding needs no check before
// it is written (see msgpackCodec.Marshal): a type that is not open nests
// as deep as its type does, and only a type with its own MessagePack
// encoder (CustomEncoder, Marshaler) may write what does not read back.

var (
	// errCyclic is wrapped by the error of encoding a value that refers to
	// itself.
	errCyclic = errors.New("cyclic value")
	// errTooDeep is wrapped by the error of encoding a value nested deeper
	// than its codec reads back.
	errTooDeep = errors.New("value nested too deep")
)

// encodeRules say how a codec walks a value.
type encodeRules struct {
	// leaf reports whether the codec encodes t with t's own method (or a
	// method of *t), so that the walk stops there.
	leaf func(t reflect.Type) bool
	// skip reports whether the codec leaves field f out.
	skip func(f reflect.StructField) bool
	// raw, when not nil, reports whether t's own method writes bytes the
	// codec does not vouch for, so that its encoding must be checked.
	raw func(t reflect.Type) bool
	// maxDepth is how deep the codec's decoder lets arrays and maps nest.
	maxDepth int

	types sync.Map // reflect.Type → *typeWalk
}

// typeWalk is what the walk needs to know of a type.
type typeWalk struct {
	// open: values of the type can hold a cycle or nest without bound,
	// and are walked.
	open bool
	// fields are the indexes of a struct's fields that are walked: those
	// the codec encodes whose types are open.
	fields []int
	// depth is how deep arrays and maps nest in the encoding of a value of
	// the type, at most, when it is not open.
	depth int
	// check: an encoding of a value of the type may not read back (it is
	// open, too deep, or holds a raw type), so it must be checked.
	check bool
}

// onCycle is the typeWalk of a type found again on the path of the type
// analysis, and of the maps and slices of interfaces that decoders make.
var onCycle = &typeWalk{open: true, check: true}

var (
	// msgpackRules walk values as Msgpack encodes them.
	msgpackRules = &encodeRules{
		leaf: func(t reflect.Type) bool {
			return t == timeType || t == errorType ||
				implementsAny(t, msgpackCustomEncoder, msgpackMarshaler, binaryMarshaler, textMarshaler)
		},
		raw: func(t reflect.Type) bool {
			return implementsAny(t, msgpackCustomEncoder, msgpackMarshaler)
		},
		skip: func(f reflect.StructField) bool {
			tag := f.Tag.Get("msgpack")
			if tag == "" {
				tag = f.Tag.Get("json")
			}
			name, _, _ := strings.Cut(tag, ",")
			return name == "-" || !f.Anonymous && !f.IsExported()
		},
		maxDepth: msgpackcheck.MaxDepth,
	}
	// jsonRules walk values as JSON (encoding/json) encodes them.
	jsonRules = &encodeRules{
		leaf: func(t reflect.Type) bool {
			return implementsAny(t, jsonMarshaler, textMarshaler)
		},
		skip: func(f reflect.StructField) bool {
			if f.Tag.Get("json") == "-" {
				return true
			}
			if f.Anonymous {
				t := f.Type
				if t.Kind() == reflect.Pointer {
					t = t.Elem()
				}
				return !f.IsExported() && t.Kind() != reflect.Struct
			}
			return !f.IsExported()
		},
		maxDepth: jsonMaxDepth,
	}
)

// jsonMaxDepth is how deep encoding/json lets arrays and objects nest when
// it decodes.
const jsonMaxDepth = 10000

var (
	timeType             = reflect.TypeFor[time.Time]()
	errorType            = reflect.TypeFor[error]()
	msgpackCustomEncoder = reflect.TypeFor[msgpack.CustomEncoder]()
	msgpackMarshaler     = reflect.TypeFor[msgpack.Marshaler]()
	jsonMarshaler        = reflect.TypeFor[json.Marshaler]()
	binaryMarshaler      = reflect.TypeFor[encoding.BinaryMarshaler]()
	textMarshaler        = reflect.TypeFor[encoding.TextMarshaler]()
)

// implementsAny reports whether t or *t implements one of the interfaces.
func implementsAny(t reflect.Type, ifaces ...reflect.Type) bool {
	pt := t
	if t.Kind() != reflect.Pointer && t.Kind() != reflect.Interface {
		pt = reflect.PointerTo(t)
	}
	for _, i := range ifaces {
		if t.Implements(i) || pt.Implements(i) {
			return true
		}
	}
	return false
}

// walkEncodable returns an error wrapping errCyclic when v refers to itself
// through what r's codec encodes, or errTooDeep when it nests deeper than
// r.maxDepth. It also reports whether v's encoding may not read back, and
// must be checked.
func (r *encodeRules) walkEncodable(v any) (check bool, err error) {
	if v == nil {
		return false, nil
	}
	var tw *typeWalk
	switch v.(type) {
	case []any, map[string]any:
		tw = onCycle
	default:
		tw = r.walkOf(reflect.TypeOf(v))
	}
	if !tw.open {
		return tw.check, nil
	}
	w := valueWalk{r: r}
	err = w.iface(v)
	return w.check, err
}

// closed is the typeWalk of types that hold no references.
var closed = &typeWalk{}

// walkOf returns how values of t are walked.
func (r *encodeRules) walkOf(t reflect.Type) *typeWalk {
	if k := t.Kind(); k <= reflect.Complex128 || k == reflect.String {
		return closed
	}
	if tw, ok := r.types.Load(t); ok {
		return tw.(*typeWalk)
	}
	a := typeAnalysis{r: r, onPath: map[reflect.Type]bool{}}
	return a.of(t)
}

// typeAnalysis finds which types are open: a depth-first search of the
// types a type's values can hold, with the types on the current path in
// onPath. A type that reaches one on the path is on a cycle of types, so
// it is open; one that reaches an interface is open too. Both answers hold
// whatever the search goes on to find, so every type is stored as soon as
// it is known. A type that is not open holds finitely many types, whose
// depths the search adds up.
type typeAnalysis struct {
	r      *encodeRules
	onPath map[reflect.Type]bool
}

func (a *typeAnalysis) of(t reflect.Type) *typeWalk {
	if tw, ok := a.r.types.Load(t); ok {
		return tw.(*typeWalk)
	}
	if a.onPath[t] {
		return onCycle
	}
	a.onPath[t] = true
	tw := &typeWalk{}
	k := t.Kind()
	switch {
	case a.r.leaf(t):
		tw.check = a.r.raw != nil && a.r.raw(t)
	case k == reflect.Interface:
		tw.open, tw.check = true, true
	case k == reflect.Pointer:
		tw.add(a.of(t.Elem()), 0)
	case (k == reflect.Slice || k == reflect.Array) && t.Elem().Kind() == reflect.Uint8:
		// Bytes, encoded as such.
	case k == reflect.Slice || k == reflect.Array:
		tw.add(a.of(t.Elem()), 1)
	case k == reflect.Map:
		tw.add(a.of(t.Key()), 1)
		tw.add(a.of(t.Elem()), 1)
	case k == reflect.Struct:
		tw.depth = 1
		for i := range t.NumField() {
			f := t.Field(i)
			if a.r.skip(f) {
				continue
			}
			ft := a.of(f.Type)
			if ft.open {
				tw.fields = append(tw.fields, i)
			}
			tw.add(ft, 1)
		}
	}
	if tw.depth > a.r.maxDepth {
		tw.check = true
	}
	delete(a.onPath, t)
	a.r.types.Store(t, tw)
	return tw
}

// add accounts for a type held in tw's, inside container levels.
func (tw *typeWalk) add(held *typeWalk, container int) {
	tw.open = tw.open || held.open
	tw.check = tw.check || held.check
	tw.depth = max(tw.depth, held.depth+container)
}

// trackAfter is the path length after which the walk tracks the pointers,
// maps and slices on its path: values are rarely deeper, and a cycle, which
// makes the path endless, is found all the same.
const trackAfter = 64

// valueWalk walks one value.
type valueWalk struct {
	r     *encodeRules
	depth int // arrays and maps (as encoded) on the path
	hops  int // pointers, arrays and maps on the path
	// path holds the references on the path, once it is longer than
	// trackAfter. A reference is its address and type: a struct and its
	// first field share an address.
	path map[ref]struct{}
	// check: the value holds more than nil, booleans, numbers, strings,
	// and []any and map[string]any of them, so its encoding is checked.
	check bool
}

type ref struct {
	p   unsafe.Pointer
	len int // a slice's length; 0 for a pointer or a map
	t   reflect.Type
}

// iface walks x, a value held in an interface. The types a JSON or
// MessagePack decoder puts in interfaces are walked without reflection.
func (w *valueWalk) iface(x any) error {
	switch x := x.(type) {
	case nil, bool, string, float64, float32, int, int64, int32, int16, int8, uint, uint64, uint32, uint16, uint8:
		return nil
	case []any:
		if len(x) == 0 {
			return nil
		}
		r := ref{p: unsafe.Pointer(unsafe.SliceData(x)), len: len(x), t: anySliceType}
		if err := w.enter(r, true); err != nil {
			return err
		}
		for _, e := range x {
			if err := w.iface(e); err != nil {
				return err
			}
		}
		w.leave(r, true)
		return nil
	case map[string]any:
		if len(x) == 0 {
			return nil
		}
		r := ref{p: reflect.ValueOf(x).UnsafePointer(), t: anyMapType}
		if err := w.enter(r, true); err != nil {
			return err
		}
		for _, e := range x {
			if err := w.iface(e); err != nil {
				return err
			}
		}
		w.leave(r, true)
		return nil
	}
	// Past the types above, the walk does not follow what the codec
	// writes closely enough to know that it reads back.
	w.check = true
	t := reflect.TypeOf(x)
	if !w.r.walkOf(t).open {
		return nil
	}
	return w.value(reflect.ValueOf(x))
}

var (
	anySliceType = reflect.TypeFor[[]any]()
	anyMapType   = reflect.TypeFor[map[string]any]()
)

// value walks v, whose type is open.
func (w *valueWalk) value(v reflect.Value) error {
	switch v.Kind() {
	case reflect.Interface:
		if v.IsNil() {
			return nil
		}
		if v.CanInterface() {
			return w.iface(v.Interface())
		}
		if !w.r.walkOf(v.Elem().Type()).open {
			return nil
		}
		return w.value(v.Elem())
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		r := ref{p: v.UnsafePointer(), t: v.Type()}
		if err := w.enter(r, false); err != nil {
			return err
		}
		if err := w.value(v.Elem()); err != nil {
			return err
		}
		w.leave(r, false)
	case reflect.Map:
		if v.Len() == 0 {
			return nil
		}
		r := ref{p: v.UnsafePointer(), t: v.Type()}
		if err := w.enter(r, true); err != nil {
			return err
		}
		if err := w.mapEntries(v); err != nil {
			return err
		}
		w.leave(r, true)
	case reflect.Slice, reflect.Array:
		if v.Len() == 0 {
			return nil
		}
		r := ref{t: v.Type()}
		if v.Kind() == reflect.Slice {
			r.p, r.len = v.UnsafePointer(), v.Len()
		}
		if err := w.enter(r, true); err != nil {
			return err
		}
		for i := range v.Len() {
			if err := w.value(v.Index(i)); err != nil {
				return err
			}
		}
		w.leave(r, true)
	case reflect.Struct:
		if err := w.enter(ref{}, true); err != nil {
			return err
		}
		for _, i := range w.r.walkOf(v.Type()).fields {
			if err := w.value(v.Field(i)); err != nil {
				return err
			}
		}
		w.leave(ref{}, true)
	}
	return nil
}

// enter goes into a reference (r.p not nil), a container (encoded as an
// array or a map), or both. It fails when r is already on the path, or the
// path is as deep as the codec reads back. After an error the walk is
// over: nothing is left.
func (w *valueWalk) enter(r ref, container bool) error {
	if w.hops == 4*w.r.maxDepth {
		return fmt.Errorf("%w: more than %d pointers, arrays and maps inside each other", errTooDeep, 4*w.r.maxDepth)
	}
	w.hops++
	if container {
		if w.depth == w.r.maxDepth {
			return fmt.Errorf("%w: arrays and maps nested more than %d deep", errTooDeep, w.r.maxDepth)
		}
		w.depth++
	}
	if r.p == nil || w.hops <= trackAfter {
		return nil
	}
	if w.path == nil {
		w.path = map[ref]struct{}{}
	}
	if _, ok := w.path[r]; ok {
		return fmt.Errorf("%w: a %s refers to itself", errCyclic, r.t)
	}
	w.path[r] = struct{}{}
	return nil
}

// leave undoes enter.
func (w *valueWalk) leave(r ref, container bool) {
	if container {
		w.depth--
	}
	if r.p != nil && w.hops > trackAfter {
		delete(w.path, r)
	}
	w.hops--
}

func (w *valueWalk) mapEntries(v reflect.Value) error {
	t := v.Type()
	// The entries are read into k and e, which SetIterKey and SetIterValue
	// fill without allocating.
	var k, e reflect.Value
	if w.r.walkOf(t.Key()).open {
		k = reflect.New(t.Key()).Elem()
	}
	if w.r.walkOf(t.Elem()).open {
		e = reflect.New(t.Elem()).Elem()
	}
	// A map read from an unexported field cannot be copied from; one the
	// codec encodes is such a map only when embedded.
	ro := !v.CanInterface()
	it := v.MapRange()
	for it.Next() {
		if k.IsValid() {
			if ro {
				k = it.Key()
			} else {
				k.SetIterKey(it)
			}
			if err := w.value(k); err != nil {
				return err
			}
		}
		if e.IsValid() {
			if ro {
				e = it.Value()
			} else {
				e.SetIterValue(it)
			}
			if err := w.value(e); err != nil {
				return err
			}
		}
	}
	return nil
}
