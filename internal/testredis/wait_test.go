package testredis

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fatalRecorder records a test's Fatalf and ends its goroutine, as
// testing.T does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalMessage runs fn on a goroutine of its own with a fatalRecorder and
// returns what it passed to Fatalf ("" when it did not call it).
func fatalMessage(t *testing.T, fn func(tb testing.TB)) string {
	tb := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(tb)
	}()
	Recv(t, done, "the helper under test to return or fail")
	return tb.msg
}

func TestRecv(t *testing.T) {
	ch := make(chan int, 1)
	ch <- 7
	require.Equal(t, 7, Recv(t, ch, "a value"))
	close(ch)
	require.Zero(t, Recv(t, ch, "a closed channel"), "a closed channel gives the zero value")

	msg := fatalMessage(t, func(tb testing.TB) { recv(tb, make(chan int), "the oven to heat", 10*time.Millisecond) })
	require.Contains(t, msg, "timed out after 10ms waiting for the oven to heat")
	require.Contains(t, msg, "TestRecv", "the message shows the goroutines in the module's code")
}

func TestWithin(t *testing.T) {
	var wg sync.WaitGroup
	wg.Go(func() {})
	Wait(t, &wg, "a goroutine that returns at once")

	block := make(chan struct{})
	defer close(block)
	msg := fatalMessage(t, func(tb testing.TB) { within(tb, "the pizza to bake", func() { <-block }, 10*time.Millisecond) })
	require.Contains(t, msg, "timed out after 10ms waiting for the pizza to bake")
}

func TestWaitFor(t *testing.T) {
	var wg sync.WaitGroup
	wg.Go(func() {})
	WaitFor(t, &wg, time.Second, "a goroutine that returns at once")

	block := make(chan struct{})
	defer close(block)
	var stuck sync.WaitGroup
	stuck.Go(func() { <-block })
	msg := fatalMessage(t, func(tb testing.TB) { WaitFor(tb, &stuck, 10*time.Millisecond, "the dough to rise") })
	require.Contains(t, msg, "timed out after 10ms waiting for the dough to rise")
}

// closer is a Close that returns err.
type closer struct{ err error }

func (c closer) Close() error { return c.err }

func TestCloseWithin(t *testing.T) {
	CloseWithin(t, "a closer", closer{})

	var got string
	rec := &errorRecorder{TB: t, errorf: func(format string, args ...any) { got = fmt.Sprintf(format, args...) }}
	CloseWithin(rec, "the oven", closer{errors.New("door stuck")})
	require.Equal(t, "closing the oven: door stuck", got)
}

// errorRecorder passes a test's Errorf to errorf.
type errorRecorder struct {
	testing.TB
	errorf func(format string, args ...any)
}

func (r *errorRecorder) Helper()                           {}
func (r *errorRecorder) Errorf(format string, args ...any) { r.errorf(format, args...) }
