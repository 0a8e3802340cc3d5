package cache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/stockpot-go/cache/internal/testredis"
)

// getCalls returns how many GET commands the server has run.
func getCalls(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	n, err := getCallsOf(t.Context(), rdb)
	require.NoError(t, err)
	return n
}

func getCallsOf(ctx context.Context, rdb *redis.Client) (int, error) {
	s, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_get:calls="); ok {
			return strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		}
	}
	return 0, nil
}

// readInFlight waits until m has a read in flight.
func readInFlight(t *testing.T, m *Manager) {
	t.Helper()
	require.Eventually(t, func() bool {
		m.reads.mu.Lock()
		defer m.reads.mu.Unlock()
		return m.reads.busy
	}, testredis.Timeout, time.Millisecond, "the first read was not sent")
}

// TestReadsShareRoundTrips: goroutines reading one hot key while a read is
// in flight share one GET per round trip, and each gets the value.
func TestReadsShareRoundTrips(t *testing.T) {
	srv, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Timeout: 10 * time.Second})
	direct := srv.Client(t)
	ctx := t.Context()
	require.NoError(t, m.Set(ctx, "hot", "v"))
	proxy.SetLatency(0, 5*time.Millisecond) // every reply takes a while: reads overlap
	before := getCalls(t, direct)
	const readers, reads = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, readers*reads)
	for range readers {
		wg.Go(func() {
			for range reads {
				v, err := Get[string](ctx, m, "hot")
				if err == nil && v != "v" {
					err = fmt.Errorf("read %q, want %q", v, "v")
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	testredis.Wait(t, &wg, "the readers of the hot key")
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	gets := getCalls(t, direct) - before
	t.Logf("%d reads, %d GETs", readers*reads, gets)
	assert.Less(t, gets, readers*reads/4, "concurrent reads of one key did not share their GETs")
}

// TestReadDoesNotTakeAnEarlierReply: a read that begins after a write
// returned never takes the reply of a command sent before the write, even
// when a read of the same key is in flight: it waits for the next round
// trip.
func TestReadDoesNotTakeAnEarlierReply(t *testing.T) {
	srv, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Timeout: 10 * time.Second})
	direct := srv.Client(t)
	other, err := New(direct, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, other) })
	ctx := t.Context()
	for round := range 5 {
		old, now := fmt.Sprint("old-", round), fmt.Sprint("new-", round)
		proxy.SetLatency(0, 0)
		require.NoError(t, m.Set(ctx, "k", old))
		// The first read runs at once on the server and its reply comes
		// back late: it is in flight while the value changes.
		proxy.SetLatency(0, 200*time.Millisecond)
		gets := getCalls(t, direct)
		first := make(chan string, 1)
		go func() {
			v, err := Get[string](ctx, m, "k")
			if err != nil {
				v = err.Error()
			}
			first <- v
		}()
		require.Eventually(t, func() bool {
			n, err := getCallsOf(ctx, direct)
			return err == nil && n > gets
		},
			testredis.Timeout, time.Millisecond, "the first read did not reach the server")
		require.NoError(t, other.Set(ctx, "k", now))
		v, err := Get[string](ctx, m, "k")
		require.NoError(t, err)
		assert.Equal(t, now, v, "a read that began after the write returned took an older reply")
		assert.Equal(t, old, testredis.Recv(t, first, "the first read"), "the first read's reply")
	}
}

// TestQueuedReadEndsWithItsContext: a read queued behind a slow one returns
// when its own context ends, and the reads queued with it still get their
// values.
func TestQueuedReadEndsWithItsContext(t *testing.T) {
	_, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Timeout: 10 * time.Second})
	ctx := t.Context()
	require.NoError(t, m.Set(ctx, "k", "v"))
	proxy.SetLatency(0, 300*time.Millisecond)
	slow := make(chan error, 1)
	go func() {
		_, err := Get[string](ctx, m, "k")
		slow <- err
	}()
	readInFlight(t, m)
	patient := make(chan error, 1)
	go func() {
		v, err := Get[string](ctx, m, "k")
		if err == nil && v != "v" {
			err = fmt.Errorf("read %q", v)
		}
		patient <- err
	}()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Get[string](short, m, "k")
	took := time.Since(start)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, took, 250*time.Millisecond, "the queued read waited past its deadline")
	require.NoError(t, testredis.Recv(t, slow, "the slow read"))
	require.NoError(t, testredis.Recv(t, patient, "the read queued with the one that gave up"))
}

// TestCloseEndsQueuedReads: Close while reads are queued behind a slow one
// ends them, and leaves no goroutine behind (goleak in TestMain).
func TestCloseEndsQueuedReads(t *testing.T) {
	_, proxy, rdb := slowRedis(t, nil)
	m, err := New(rdb, &Options{Prefix: "test", Timeout: 10 * time.Second})
	require.NoError(t, err)
	ctx := t.Context()
	require.NoError(t, m.Set(ctx, "k", "v"))
	proxy.SetLatency(0, 200*time.Millisecond)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { _, _ = Get[string](ctx, m, "k") })
	}
	require.Eventually(t, func() bool {
		m.reads.mu.Lock()
		defer m.reads.mu.Unlock()
		return len(m.reads.queued) > 0
	}, testredis.Timeout, time.Millisecond, "no read queued")
	closeWithin(t, m)
	testredis.Wait(t, &wg, "the reads queued when Close was called")
	proxy.SetLatency(0, 0)
}

// TestMissHint: while a read of an absent key is in flight (its reply
// late), the value is stored; a read that began after the store returned
// and queued behind the first must see the value. A plain Get sends its
// own GET; a GetOrLoad takes the first read's miss as a hint, sends no
// GET, and finds the value when its load reads the entry again after
// taking the lease: it is served the value, not its loader's.
func TestMissHint(t *testing.T) {
	srv, proxy, rdb := slowRedis(t, nil)
	m := slowManager(t, proxy, rdb, Options{Timeout: 10 * time.Second})
	direct := srv.Client(t)
	other, err := New(direct, &Options{Prefix: "test"})
	require.NoError(t, err)
	t.Cleanup(func() { closeWithin(t, other) })
	ctx := t.Context()
	for round := range 4 {
		key, now := fmt.Sprint("k-", round), fmt.Sprint("new-", round)
		load := round%2 == 1 // a GetOrLoad behind the first read, else a Get
		// The first read runs at once on the server and its reply, a miss,
		// comes back late: it is in flight while the value is stored.
		proxy.SetLatency(0, 200*time.Millisecond)
		gets := getCalls(t, direct)
		first := make(chan error, 1)
		go func() {
			_, err := Get[string](ctx, m, key)
			first <- err
		}()
		require.Eventually(t, func() bool {
			n, err := getCallsOf(ctx, direct)
			return err == nil && n > gets
		}, testredis.Timeout, time.Millisecond, "the first read did not reach the server")
		require.NoError(t, other.Set(ctx, key, now))
		proxy.SetLatency(0, 0)
		if !load {
			v, err := Get[string](ctx, m, key)
			require.NoError(t, err, "a Get that began after the store returned missed")
			assert.Equal(t, now, v)
		} else {
			loads := 0
			v, err := GetOrLoad(ctx, m, key, func(context.Context) (string, error) {
				loads++
				return "loaded", nil
			})
			require.NoError(t, err)
			assert.Equal(t, now, v, "a GetOrLoad that began after the store returned did not take the stored value")
			assert.Zero(t, loads, "the loader ran although the value was stored")
			assert.Equal(t, gets+1, getCalls(t, direct), "the GetOrLoad sent a GET of its own: it did not take the miss hint")
		}
		assert.ErrorIs(t, testredis.Recv(t, first, "the first read"), ErrMiss, "the first read's reply")
	}
}
