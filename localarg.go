package cache

import (
	"hash/maphash"
	"math"
	"reflect"
	"unsafe"
)

// A memo's local copies, found by the argument itself.
//
// A memo whose argument type is plain (see argLayoutOf) keeps its local
// copies under a hash of the argument, and checks the argument kept with
// a copy against the one asked for: a hit encodes nothing and allocates
// nothing. That is safe because, for a plain type, two arguments equal
// here always have one key text (argKey): strings by their bytes, numbers
// by value (0 and -0 are equal; a NaN equals nothing, so an argument
// holding one is kept under its key text instead), structs and arrays
// field by field, leaving out what argKey leaves out (blank fields and
// those tagged `cache:"-"`). Types with pointers, interfaces, slices or
// maps are not plain: a pointer's target may change under the same
// pointer, and argKey writes the target. They, and memos with KeyBy, keep
// their copies under the entry's key, as plain keys do.

// argLayout is where the parts of a plain argument type are in its memory.
type argLayout struct {
	parts []argPart
}

// argPart is one scalar of a plain argument.
type argPart struct {
	off  uintptr
	kind argKind
}

type argKind uint8

const (
	argString argKind = iota
	argBits8
	argBits16
	argBits32
	argBits64
	argFloat32
	argFloat64
)

// maxArgParts bounds the scalars of a plain argument type: a larger one is
// cheaper to encode once than to compare on every hit.
const maxArgParts = 32

// argLayoutOf returns the layout of t when t is plain: a string, bool,
// number, or an array or struct of plain types with at most maxArgParts
// scalars in all; nil otherwise.
func argLayoutOf(t reflect.Type) *argLayout {
	l := &argLayout{}
	if !l.add(t, 0) {
		return nil
	}
	return l
}

func (l *argLayout) add(t reflect.Type, off uintptr) bool {
	part := func(k argKind, off uintptr) bool {
		l.parts = append(l.parts, argPart{off, k})
		return len(l.parts) <= maxArgParts
	}
	switch t.Kind() {
	case reflect.String:
		return part(argString, off)
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		k := argBits64
		switch t.Size() {
		case 1:
			k = argBits8
		case 2:
			k = argBits16
		case 4:
			k = argBits32
		}
		return part(k, off)
	case reflect.Float32:
		return part(argFloat32, off)
	case reflect.Float64:
		return part(argFloat64, off)
	case reflect.Complex64:
		return part(argFloat32, off) && part(argFloat32, off+4)
	case reflect.Complex128:
		return part(argFloat64, off) && part(argFloat64, off+8)
	case reflect.Array:
		for i := range t.Len() {
			if !l.add(t.Elem(), off+uintptr(i)*t.Elem().Size()) {
				return false
			}
		}
		return true
	case reflect.Struct:
		for _, f := range structFields(t).fields {
			sf := t.Field(f.index)
			if !l.add(sf.Type, off+sf.Offset) {
				return false
			}
		}
		return !structFields(t).time // holds a *time.Location
	}
	return false
}

// hash returns the hash of the argument at p, with seed.
func (l *argLayout) hash(seed maphash.Seed, p unsafe.Pointer) uint64 {
	h := uint64(len(l.parts))
	for _, pt := range l.parts {
		q := unsafe.Add(p, pt.off)
		var v uint64
		switch pt.kind {
		case argString:
			v = maphash.String(seed, *(*string)(q))
		case argBits8:
			v = uint64(*(*uint8)(q))
		case argBits16:
			v = uint64(*(*uint16)(q))
		case argBits32:
			v = uint64(*(*uint32)(q))
		case argBits64:
			v = *(*uint64)(q)
		case argFloat32:
			if f := *(*float32)(q); f != 0 { // -0 hashes as 0
				v = uint64(math.Float32bits(f))
			}
		case argFloat64:
			if f := *(*float64)(q); f != 0 {
				v = math.Float64bits(f)
			}
		}
		h = (h ^ v) * 0x9e3779b97f4a7c15
		h ^= h >> 32
	}
	return h
}

// equal says whether the arguments at p and q are equal part by part (a
// NaN equals nothing, not even itself).
func (l *argLayout) equal(p, q unsafe.Pointer) bool {
	for _, pt := range l.parts {
		a, b := unsafe.Add(p, pt.off), unsafe.Add(q, pt.off)
		var eq bool
		switch pt.kind {
		case argString:
			eq = *(*string)(a) == *(*string)(b)
		case argBits8:
			eq = *(*uint8)(a) == *(*uint8)(b)
		case argBits16:
			eq = *(*uint16)(a) == *(*uint16)(b)
		case argBits32:
			eq = *(*uint32)(a) == *(*uint32)(b)
		case argBits64:
			eq = *(*uint64)(a) == *(*uint64)(b)
		case argFloat32:
			eq = *(*float32)(a) == *(*float32)(b)
		case argFloat64:
			eq = *(*float64)(a) == *(*float64)(b)
		}
		if !eq {
			return false
		}
	}
	return true
}

// argCopy is a memo's local copy kept under its argument: the argument,
// checked on a hit, and the value.
type argCopy[A, T any] struct {
	arg A
	val T
}
