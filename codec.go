package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/stockpot-go/cache/internal/msgpackcheck"
)

// A Codec turns values into bytes and back. Unmarshal must not keep or
// change data after it returns: the bytes may be shared.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

var (
	// Msgpack is the default codec: MessagePack, compact and fast. Struct
	// fields are named by their msgpack tag, or their json tag when they
	// have no msgpack tag.
	//
	// Its arrays and maps (structs included) nest at most 1000 deep: a
	// deeper value, or one that refers to itself, is an encoding error. It
	// decodes only bytes whose declared lengths fit in them, so that a
	// decode allocates no more than the bytes can fill; other bytes are a
	// decoding error, never a panic.
	Msgpack Codec = msgpackCodec{}
	// JSON encodes values with encoding/json, for data that programs in
	// other languages read. Its arrays and objects nest at most 10000 deep;
	// a deeper value, or one that refers to itself, is an encoding error.
	JSON Codec = jsonCodec{}
)

type msgpackCodec struct{}

// msgpackDecoder pairs a pooled decoder with the reader it reads from, so a
// decode allocates neither. The reader checks the bytes first (see
// msgpackcheck).
type msgpackDecoder struct {
	dec *msgpack.Decoder
	r   msgpackcheck.Reader
}

var (
	// Reset clears an encoder's or decoder's struct tag: Marshal and
	// Unmarshal set it after each Reset.
	msgpackDecoders = sync.Pool{New: func() any { return &msgpackDecoder{dec: msgpack.NewDecoder(nil)} }}
	msgpackEncoders = sync.Pool{New: func() any { return msgpack.NewEncoder(nil) }}
)

// Marshal encodes v, after making sure it neither refers to itself nor
// nests deeper than Unmarshal reads back; the bytes it returns pass
// Unmarshal's check.
func (msgpackCodec) Marshal(v any) ([]byte, error) {
	check, err := msgpackRules.walkEncodable(v)
	if err != nil {
		return nil, err
	}
	e := msgpackEncoders.Get().(*msgpack.Encoder)
	defer msgpackEncoders.Put(e)
	var buf bytes.Buffer
	e.Reset(&buf)
	e.SetCustomStructTag("json")
	if err := e.Encode(v); err != nil {
		return nil, err
	}
	// A value's own encoder (a CustomEncoder, say) may nest deeper than
	// the walk saw, or write what is not MessagePack. Values of the other
	// types are known to read back.
	if check {
		if err := msgpackcheck.Check(buf.Bytes()); err != nil {
			return nil, fmt.Errorf("the encoding would not decode: %w", err)
		}
	}
	return buf.Bytes(), nil
}

// Unmarshal checks data, then decodes it into v. A panic of the decoder
// (on a map key that cannot be a Go map key, say) is returned as an error.
func (msgpackCodec) Unmarshal(data []byte, v any) (err error) {
	d := msgpackDecoders.Get().(*msgpackDecoder)
	defer func() {
		if p := recover(); p != nil {
			// The decoder may be in any state: let it go.
			err = fmt.Errorf("msgpack: decoding panicked: %v", p)
			return
		}
		d.r.Release()
		msgpackDecoders.Put(d)
	}()
	if err := d.r.Reset(data); err != nil {
		return err
	}
	if a, ok := v.(*any); ok {
		*a = nil // decode into it afresh, a nil as nil (as JSON does)
	}
	d.dec.Reset(&d.r)
	d.dec.SetCustomStructTag("json")
	if err := d.dec.Decode(v); err != nil {
		if errors.Is(err, msgpackcheck.ErrInvalid) {
			return err // an extension read as a value: hostile bytes
		}
		// Otherwise the bytes are well-formed MessagePack (Reset checked
		// them) holding a value of another type.
		return mismatch(v, err)
	}
	return nil
}

// mismatch is the error of well-formed stored bytes that hold a value of
// another type than v points to.
func mismatch(v any, err error) error {
	return fmt.Errorf("type mismatch: the stored value does not decode into %s: %w", strings.TrimPrefix(fmt.Sprintf("%T", v), "*"), err)
}

type jsonCodec struct{}

// Marshal encodes v, after making sure it neither refers to itself nor
// nests deeper than encoding/json decodes.
func (jsonCodec) Marshal(v any) ([]byte, error) {
	if _, err := jsonRules.walkEncodable(v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// Unmarshal decodes data into v. encoding/json checks the whole of data
// before it decodes any of it, and refuses arrays and objects nested more
// than 10000 deep; a panic (of a value's own UnmarshalJSON) is returned as
// an error.
func (jsonCodec) Unmarshal(data []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("json: decoding panicked: %v", p)
		}
	}()
	err = json.Unmarshal(data, v)
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return mismatch(v, err)
	}
	return err
}
