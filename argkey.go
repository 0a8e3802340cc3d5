package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// A memo's argument is its key: equal arguments must share an entry and
// different ones must not, in every process. argKey writes an argument as
// canonical text, in a grammar directed by the argument's type, so that two
// arguments of one type get one text exactly when they are equal:
//
//	bool                 true, false
//	integers             decimal: -12
//	floats               shortest decimal that reads back ('g'): 0.1, 1e+21;
//	                     -0 is 0, every NaN is NaN, and +Inf, -Inf
//	complex numbers      (re,im), each part as a float
//	strings, []byte,     quoted as by strconv.Quote, which keeps every byte:
//	[N]byte              invalid UTF-8 is written \xff
//	time.Time            its instant in UTC, RFC 3339 with nanoseconds:
//	                     2026-03-01T12:00:00.5Z (zone and monotonic reading
//	                     left out); @seconds.nanoseconds outside years 0-9999
//	slices, arrays       [a,b]; a nil slice is [], as an empty one
//	maps                 {k:v,k:v} in the byte order of the keys' texts; a nil
//	                     map is {}; keys that are different in Go but equal
//	                     here (two NaNs) are refused
//	structs              {Name:v,Other:v}, every field, exported or not,
//	                     except blank ones and those tagged `cache:"-"`
//	pointers             nil, or & then the value pointed to
//	interfaces           nil, or the dynamic type's name then (value):
//	                     int(5), "main.Query"({...}) (quoted when the name
//	                     holds other than letters, digits and _./*[]-)
//	funcs, channels,     refused, as are values that refer to themselves
//	unsafe pointers
//
// Every form ends where its type says it ends (a number at the next , ] }
// : or ), a quoted string at its closing quote, a bracket at its match), so
// the text of a container can be read back, and two equal texts come from
// equal arguments. The key is the text after "v:", or the SHA-256 of it
// after "vh:" when the text is longer than maxPlainArg. Strings and
// integers of those types take short paths that reflect nothing: "s:" then
// the string as it is (up to maxPlainArg bytes), and "i:" then the decimal.
// No form starts like another: s: i: v: vh: _ (the empty struct), and u:
// and uh: for the texts of KeyBy.

// maxPlainArg is the longest argument text kept as it is in a key.
const maxPlainArg = 96

// maxArgText bounds an argument's text, and so the time and memory taken to
// make a key of an argument that shares pointers (a DAG written out in full
// can be exponentially larger than it is in memory).
const maxArgText = 1 << 20

// argKey returns prefix followed by the key text of a memo argument (see
// above). A is the memo's argument type: when it is an interface type, the
// argument's dynamic type is part of the key.
func argKey[A any](prefix string, a A) (string, error) {
	if reflect.TypeFor[A]().Kind() != reflect.Interface {
		switch v := any(a).(type) {
		case string:
			if len(v) <= maxPlainArg {
				return prefix + "s:" + v, nil
			}
		case int:
			return prefix + "i:" + strconv.Itoa(v), nil
		case int64:
			return prefix + "i:" + strconv.FormatInt(v, 10), nil
		case struct{}:
			return prefix + "_", nil
		}
	}
	return argText(prefix, a)
}

// argText returns prefix followed by a's text, or its hash. It takes a's
// address, which moves a to the heap: argKey's short paths do not.
func argText[A any](prefix string, a A) (string, error) {
	e := argEncoders.Get().(*argEncoder)
	defer e.release()
	if err := e.value(reflect.ValueOf(&a).Elem()); err != nil {
		return "", err
	}
	if len(e.buf) <= maxPlainArg {
		return prefix + "v:" + string(e.buf), nil
	}
	sum := sha256.Sum256(e.buf)
	return prefix + "vh:" + base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// userKey returns prefix followed by text, a KeyBy function's key text of
// an argument, or its hash when it is long.
func userKey(prefix, text string) string {
	if len(text) <= maxPlainArg {
		return prefix + "u:" + text
	}
	sum := sha256.Sum256([]byte(text))
	return prefix + "uh:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

var argEncoders = sync.Pool{New: func() any { return &argEncoder{buf: make([]byte, 0, 2*maxPlainArg)} }}

// release puts e back in argEncoders, unless it has grown large.
func (e *argEncoder) release() {
	if cap(e.buf) > 64<<10 {
		return
	}
	e.buf, e.depth, e.path = e.buf[:0], 0, nil
	argEncoders.Put(e)
}

// argError is why an argument cannot be a key. It matches ErrInvalidKey.
type argError struct{ error }

func (e argError) Unwrap() []error { return []error{ErrInvalidKey, e.error} }

func notKey(format string, args ...any) error {
	return argError{fmt.Errorf(format, args...)}
}

// argEncoder writes an argument's text into buf.
//
// It reads unexported fields too. reflect lets a value read from one be
// read but not copied or turned into an interface, which time.Time needs;
// so every struct and array it walks is addressable (those in maps and
// interfaces are copied first) and a field read from one is re-made at the
// same address without the restriction.
type argEncoder struct {
	buf   []byte
	depth int // values on the path
	// path holds the references on the path, once it is longer than
	// trackAfter (as in valueWalk).
	path map[ref]struct{}
}

// maxArgDepth bounds how deep an argument may nest.
const maxArgDepth = 1000

func (e *argEncoder) value(v reflect.Value) error {
	if e.depth == maxArgDepth {
		return notKey("nested more than %d deep", maxArgDepth)
	}
	if len(e.buf) > maxArgText {
		return notKey("its text is longer than %d bytes", maxArgText)
	}
	e.depth++
	err := e.kind(v)
	e.depth--
	return err
}

// kind writes v by its kind.
func (e *argEncoder) kind(v reflect.Value) error {
	t := v.Type()
	if (t.Kind() == reflect.Struct || t.Kind() == reflect.Array) && !v.CanAddr() {
		c := reflect.New(t).Elem()
		c.Set(v)
		v = c
	}
	switch t.Kind() {
	case reflect.Bool:
		e.buf = strconv.AppendBool(e.buf, v.Bool())
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.buf = strconv.AppendInt(e.buf, v.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		e.buf = strconv.AppendUint(e.buf, v.Uint(), 10)
	case reflect.Float32, reflect.Float64:
		e.float(v.Float(), t.Bits())
	case reflect.Complex64, reflect.Complex128:
		c := v.Complex()
		e.buf = append(e.buf, '(')
		e.float(real(c), t.Bits()/2)
		e.buf = append(e.buf, ',')
		e.float(imag(c), t.Bits()/2)
		e.buf = append(e.buf, ')')
	case reflect.String:
		e.quote(v.String())
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			e.quote(string(v.Bytes()))
			return nil
		}
		return e.through(ref{p: v.UnsafePointer(), len: v.Len(), t: t}, func() error { return e.elems(v) })
	case reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			e.quote(string(v.Bytes()))
			return nil
		}
		return e.elems(v)
	case reflect.Map:
		return e.through(ref{p: v.UnsafePointer(), t: t}, func() error { return e.mapEntries(v) })
	case reflect.Struct:
		sf := structFields(t)
		if sf.time {
			e.time(*(*time.Time)(unsafe.Pointer(v.UnsafeAddr())))
			return nil
		}
		return e.fields(v, sf.fields)
	case reflect.Pointer:
		if v.IsNil() {
			e.buf = append(e.buf, "nil"...)
			return nil
		}
		e.buf = append(e.buf, '&')
		return e.through(ref{p: v.UnsafePointer(), t: t}, func() error { return e.value(v.Elem()) })
	case reflect.Interface:
		if v.IsNil() {
			e.buf = append(e.buf, "nil"...)
			return nil
		}
		if err := e.typeName(v.Elem().Type()); err != nil {
			return err
		}
		e.buf = append(e.buf, '(')
		if err := e.value(v.Elem()); err != nil {
			return err
		}
		e.buf = append(e.buf, ')')
	default: // func, chan, unsafe pointer
		return notKey("it holds a %s", t)
	}
	return nil
}

// through walks into the reference r with fn, failing if r is already on
// the path (as valueWalk.enter).
func (e *argEncoder) through(r ref, fn func() error) error {
	if r.p == nil || e.depth <= trackAfter {
		return fn()
	}
	if e.path == nil {
		e.path = map[ref]struct{}{}
	}
	if _, ok := e.path[r]; ok {
		return notKey("%w: a %s refers to itself", errCyclic, r.t)
	}
	e.path[r] = struct{}{}
	err := fn()
	delete(e.path, r)
	return err
}

// quote writes s quoted as strconv.Quote does, faster when s is printable
// ASCII with no quote or backslash (which Quote writes as it is).
func (e *argEncoder) quote(s string) {
	for i := range len(s) {
		if c := s[i]; c < ' ' || c > '~' || c == '"' || c == '\\' {
			e.buf = strconv.AppendQuote(e.buf, s)
			return
		}
	}
	e.buf = append(e.buf, '"')
	e.buf = append(e.buf, s...)
	e.buf = append(e.buf, '"')
}

func (e *argEncoder) float(f float64, bits int) {
	switch {
	case f == 0:
		e.buf = append(e.buf, '0') // and -0
	case math.IsNaN(f):
		e.buf = append(e.buf, "NaN"...) // whatever its bits and sign
	default:
		e.buf = strconv.AppendFloat(e.buf, f, 'g', -1, bits) // and +Inf, -Inf
	}
}

func (e *argEncoder) time(t time.Time) {
	t = t.UTC()
	if y := t.Year(); y >= 0 && y <= 9999 {
		e.buf = t.AppendFormat(e.buf, time.RFC3339Nano)
		return
	}
	e.buf = append(e.buf, '@')
	e.buf = strconv.AppendInt(e.buf, t.Unix(), 10)
	e.buf = append(e.buf, '.')
	ns := t.Nanosecond()
	for d := 100000000; d > 0; d /= 10 {
		e.buf = append(e.buf, byte('0'+ns/d%10))
	}
}

func (e *argEncoder) elems(v reflect.Value) error {
	e.buf = append(e.buf, '[')
	for i := range v.Len() {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		if err := e.value(v.Index(i)); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, ']')
	return nil
}

// mapEntries writes v's entries in the byte order of their keys' texts: it
// writes them as they come, then rewrites them in order.
func (e *argEncoder) mapEntries(v reflect.Value) error {
	e.buf = append(e.buf, '{')
	start := len(e.buf)
	type entry struct{ k, colon, end int } // offsets in e.buf
	var entries []entry
	it := v.MapRange()
	for it.Next() {
		en := entry{k: len(e.buf)}
		if err := e.value(it.Key()); err != nil {
			return err
		}
		en.colon = len(e.buf)
		e.buf = append(e.buf, ':')
		if err := e.value(it.Value()); err != nil {
			return err
		}
		en.end = len(e.buf)
		entries = append(entries, en)
	}
	if len(entries) > 1 {
		text := slices.Clone(e.buf[start:])
		key := func(en entry) []byte { return text[en.k-start : en.colon-start] }
		slices.SortFunc(entries, func(a, b entry) int { return bytes.Compare(key(a), key(b)) })
		e.buf = e.buf[:start]
		for i, en := range entries {
			if i > 0 {
				if bytes.Equal(key(entries[i-1]), key(en)) {
					return notKey("two keys of a %s are equal as arguments: %s", v.Type(), key(en))
				}
				e.buf = append(e.buf, ',')
			}
			e.buf = append(e.buf, text[en.k-start:en.end-start]...)
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

func (e *argEncoder) fields(v reflect.Value, fields []argField) error {
	e.buf = append(e.buf, '{')
	for i, af := range fields {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = append(e.buf, af.name...)
		f := v.Field(af.index)
		if !f.CanInterface() {
			f = reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
		}
		if err := e.value(f); err != nil {
			return err
		}
	}
	e.buf = append(e.buf, '}')
	return nil
}

// argStruct is how a struct type is written.
type argStruct struct {
	time   bool // a time.Time, or a type defined from it: written as one
	fields []argField
}

// argField is a field written in a struct's text.
type argField struct {
	index int
	name  string // with the colon
}

var argStructs sync.Map // reflect.Type → *argStruct

func structFields(t reflect.Type) *argStruct {
	if as, ok := argStructs.Load(t); ok {
		return as.(*argStruct)
	}
	as := &argStruct{time: t.ConvertibleTo(timeType)}
	for i := range t.NumField() {
		sf := t.Field(i)
		if sf.Name != "_" && sf.Tag.Get("cache") != "-" {
			as.fields = append(as.fields, argField{index: i, name: sf.Name + ":"})
		}
	}
	argStructs.Store(t, as)
	return as
}

// argTypes maps the names typeName writes to their types, so that two types
// that would be written alike (two types T declared in two functions of one
// package) are refused rather than confused.
var argTypes sync.Map // string → reflect.Type

// typeName writes the name of an interface's dynamic type t: its package
// path and name, or for an unnamed type its literal, with the names of the
// types in it written the same way.
func (e *argEncoder) typeName(t reflect.Type) error {
	name := fullTypeName(t)
	if prev, loaded := argTypes.LoadOrStore(name, t); loaded && prev.(reflect.Type) != t {
		return notKey("two types are named %s", name)
	}
	for i := range len(name) {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || bytes.IndexByte([]byte("_./*[]-"), c) >= 0) {
			e.buf = strconv.AppendQuote(e.buf, name)
			return nil
		}
	}
	e.buf = append(e.buf, name...)
	return nil
}

func fullTypeName(t reflect.Type) string {
	if t.Name() != "" {
		if t.PkgPath() == "" {
			return t.Name() // predeclared
		}
		return t.PkgPath() + "." + t.Name()
	}
	switch t.Kind() {
	case reflect.Pointer:
		return "*" + fullTypeName(t.Elem())
	case reflect.Slice:
		return "[]" + fullTypeName(t.Elem())
	case reflect.Array:
		return "[" + strconv.Itoa(t.Len()) + "]" + fullTypeName(t.Elem())
	case reflect.Map:
		return "map[" + fullTypeName(t.Key()) + "]" + fullTypeName(t.Elem())
	}
	return t.String()
}
