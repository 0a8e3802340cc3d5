package cache

import (
	"errors"
	"fmt"
	"strings"
)

// Errors returned by the package. Check them with errors.Is.
var (
	// ErrMiss is returned when a key holds no value (or one that has expired
	// or does not decode).
	ErrMiss = errors.New("cache: miss")
	// ErrNotFound is returned by a loader to say the thing it loads does not
	// exist. The miss is remembered for Options.NegativeTTL and answered with
	// ErrNotFound without calling the loader again.
	ErrNotFound = errors.New("cache: not found")
	// ErrInvalidKey is returned for an empty key, hash name, field, memo name
	// or tag, and for a Prefix that holds a brace.
	ErrInvalidKey = errors.New("cache: invalid key")
	// ErrInvalidOption is returned for an option out of its range, such as a
	// TTL that is not positive.
	ErrInvalidOption = errors.New("cache: invalid option")
	// ErrValueTooLarge is returned when a value's stored form is larger than
	// Options.MaxValueSize. Nothing is written.
	ErrValueTooLarge = errors.New("cache: value too large")
	// ErrNotObtained is returned when a lock is held by someone else.
	ErrNotObtained = errors.New("cache: lock not obtained")
	// ErrLockLost is returned when a lock expired or was taken over before
	// its holder released or refreshed it.
	ErrLockLost = errors.New("cache: lock lost")
	// ErrClosed is returned by every call on a closed Manager.
	ErrClosed = errors.New("cache: manager closed")
	// ErrUnavailable is matched by the errors of calls that could not reach
	// Redis: a refused or lost connection, a timeout, or the circuit breaker
	// open. Loaded reads do not return it: they fall back to the loader.
	ErrUnavailable = errors.New("cache: redis unavailable")
	// ErrNotReplicated is matched by the error of a write that fewer
	// replicas acknowledged than Options.WaitReplicas asks for, in time.
	// The master has it; a failover before the replicas catch up may lose
	// it.
	ErrNotReplicated = errors.New("cache: not acknowledged by enough replicas")
)

// PanicError is the error every caller waiting on a load gets when the
// loader panics (nothing is stored), and the error of a warming job or an
// event rule that panics.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the loader's stack at the panic
}

// Error says that the loader panicked, and with what.
func (e *PanicError) Error() string {
	return fmt.Sprintf("cache: panic: %v", e.Value)
}

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// DecodeError reports stored bytes that did not decode: a corrupt entry, one
// written by another program, or one written in a format or type this build
// does not read. Such an entry is counted and treated as a miss.
type DecodeError struct {
	Key   string // the Redis key
	Field string // the hash field, "" for a plain key
	Err   error
}

// Error names the key (and field) and why it did not decode.
func (e *DecodeError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("cache: decode %s field %q: %v", e.Key, e.Field, e.Err)
	}
	return fmt.Sprintf("cache: decode %s: %v", e.Key, e.Err)
}

// Unwrap returns why the bytes did not decode.
func (e *DecodeError) Unwrap() error { return e.Err }

// wrap returns err with context: "cache: " and the context made of format
// and args, then err's text without its own "cache: ", so that an error of
// the package says "cache:" once however deep it was made.
func wrap(err error, format string, args ...any) error {
	return &wrapped{msg: fmt.Sprintf(format, args...), err: err}
}

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string {
	return "cache: " + w.msg + ": " + strings.TrimPrefix(w.err.Error(), "cache: ")
}

func (w *wrapped) Unwrap() error { return w.err }
