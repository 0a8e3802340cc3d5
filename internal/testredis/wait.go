package testredis

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Timeout bounds every wait of a test: a value from a channel, a WaitGroup,
// a Close, a condition polled with require.Eventually. It is far above what
// any of them takes on a busy two-core machine under the race detector, and
// far below go test's -timeout, so that a test whose awaited event never
// comes fails within a minute, saying what it waited for, instead of hanging
// until the test binary is killed.
const Timeout = 20 * time.Second

// Recv returns the next value from ch (the zero value once ch is closed).
// When none comes within Timeout, it fails t, saying that what did not
// happen. Call it from the test's goroutine.
func Recv[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	return recv(t, ch, what, Timeout)
}

// recv is Recv with a bound of d.
func recv[T any](t testing.TB, ch <-chan T, what string, d time.Duration) T {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("timed out after %v waiting for %s%s", d, what, stacks())
		panic("unreachable")
	}
}

// Within runs f on a goroutine of its own and waits for it to return. When
// it has not returned within Timeout, Within fails t, saying that what did
// not happen, and leaves f running. f must not call t.FailNow (nor
// require's functions): it does not run on the test's goroutine. Call
// Within from the test's goroutine, or from a t.Cleanup function.
func Within(t testing.TB, what string, f func()) {
	t.Helper()
	within(t, what, f, Timeout)
}

// within is Within with a bound of d.
func within(t testing.TB, what string, f func(), d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	recv(t, done, what, d)
}

// Wait waits for wg as Within does.
func Wait(t testing.TB, wg *sync.WaitGroup, what string) {
	t.Helper()
	Within(t, what, wg.Wait)
}

// WaitFor is Wait with a bound of d instead of Timeout, for a wait whose
// length the test sets, such as that for workers that run for a duration
// of its choosing.
func WaitFor(t testing.TB, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	within(t, what, wg.Wait, d)
}

// CloseWithin calls c.Close as Within does, failing t when it does not
// return within Timeout or returns an error. what names c.
func CloseWithin(t testing.TB, what string, c interface{ Close() error }) {
	t.Helper()
	var err error
	Within(t, what+" to close", func() { err = c.Close() })
	if err != nil {
		t.Errorf("closing %s: %v", what, err)
	}
}

// stacks returns the stacks of the goroutines that run the module's code,
// to show what a failed wait was stuck behind, or "" when there are none.
func stacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out bytes.Buffer
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		if !bytes.Contains(g, []byte("github.com/stockpot-go/cache")) || bytes.Contains(g, []byte("testredis.stacks")) {
			continue
		}
		if out.Len() > 32<<10 {
			out.WriteString("\n\n(more goroutines left out)")
			break
		}
		out.WriteString("\n\n")
		out.Write(g)
	}
	if out.Len() == 0 {
		return ""
	}
	return "; the goroutines in the module's code:" + out.String()
}
