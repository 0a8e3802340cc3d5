package cache

import (
	"bytes"
	"encoding/json"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
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
	Msgpack Codec = msgpackCodec{}
	// JSON encodes values with encoding/json, for data that programs in
	// other languages read.
	JSON Codec = jsonCodec{}
)

type msgpackCodec struct{}

// msgpackDecoder pairs a pooled decoder with the reader it reads from, so a
// decode allocates neither.
type msgpackDecoder struct {
	dec *msgpack.Decoder
	r   bytes.Reader
}

var (
	msgpackDecoders = sync.Pool{New: func() any {
		d := &msgpackDecoder{dec: msgpack.NewDecoder(nil)}
		d.dec.SetCustomStructTag("json")
		return d
	}}
	msgpackEncoders = sync.Pool{New: func() any {
		e := msgpack.NewEncoder(nil)
		e.SetCustomStructTag("json")
		return e
	}}
)

func (msgpackCodec) Marshal(v any) ([]byte, error) {
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

func (msgpackCodec) Unmarshal(data []byte, v any) error {
	d := msgpackDecoders.Get().(*msgpackDecoder)
	d.r.Reset(data)
	d.dec.Reset(&d.r)
	d.dec.SetCustomStructTag("json")
	err := d.dec.Decode(v)
	d.r.Reset(nil)
	msgpackDecoders.Put(d)
	return err
}

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
