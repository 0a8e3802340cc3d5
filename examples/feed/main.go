// Command feed serves a user's tweets from a slow upstream (an HTTP service
// that takes 300ms an answer) through a stale-while-revalidate memo: no
// reader ever waits for the upstream. A cold read answers "nothing yet" at
// once and fetches in the background; a read past the TTL answers with the
// stale tweets at once and refreshes them in the background.
//
// The TTL is one second, so that the whole life of an entry fits in a few
// seconds of output; a real feed would use minutes.
//
// With REDIS_ADDR unset it runs on an in-process miniredis.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache"
)

const (
	upstreamLatency = 300 * time.Millisecond
	ttl             = time.Second
	staleFor        = time.Minute
)

// Tweet is one post of a user's timeline.
type Tweet struct {
	ID   int    `json:"id"`
	Text string `json:"text"`
}

// Timeline is what the upstream answers for a user: the latest tweets, and
// when it made the answer.
type Timeline struct {
	User      string    `json:"user"`
	Tweets    []Tweet   `json:"tweets"`
	FetchedAt time.Time `json:"fetched_at"`
}

// upstream is the slow service: each request takes upstreamLatency, and the
// user has posted one more tweet since the last request.
type upstream struct {
	mu    sync.Mutex // protects posts
	posts map[string]int
	calls atomic.Int64
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.calls.Add(1)
	select {
	case <-time.After(upstreamLatency):
	case <-r.Context().Done():
		return
	}
	user := r.PathValue("user")
	u.mu.Lock()
	u.posts[user]++
	n := u.posts[user]
	u.mu.Unlock()
	tl := Timeline{User: user, FetchedAt: time.Now()}
	for id := n; id > 0 && id > n-3; id-- {
		tl.Tweets = append(tl.Tweets, Tweet{ID: id, Text: fmt.Sprintf("@%s's post #%d", user, id)})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(tl)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		if ctx.Err() != nil {
			fmt.Println("\ninterrupted")
			return
		}
		log.Fatal(err)
	}
}

// run is the demo; it stops early, returning ctx's error, on Ctrl-C.
func run(ctx context.Context) error {
	// The slow upstream, on a free loopback port.
	up := &upstream{posts: map[string]int{}}
	mux := http.NewServeMux()
	mux.Handle("GET /users/{user}/tweets", up)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	base := "http://" + ln.Addr().String()
	fmt.Printf("upstream: %s, %v a request\n", base, upstreamLatency)

	addr := os.Getenv("REDIS_ADDR")
	if addr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		addr = mr.Addr()
		fmt.Println("REDIS_ADDR unset: using an embedded miniredis at", addr)
	} else {
		fmt.Println("using Redis at", addr)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	// Dial first, so that the latencies below are the cache's own.
	if err := rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	m, err := cache.New(rdb, &cache.Options{Prefix: "feed"})
	if err != nil {
		return err
	}
	defer m.Close()

	client := &http.Client{Timeout: 5 * time.Second}
	fetchTweets := func(ctx context.Context, user string) (Timeline, error) {
		var tl Timeline
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/users/"+user+"/tweets", nil)
		if err != nil {
			return tl, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return tl, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return tl, fmt.Errorf("upstream: %s", resp.Status)
		}
		return tl, json.NewDecoder(resp.Body).Decode(&tl)
	}

	tweets := cache.Memoize(m, "tweets", fetchTweets,
		cache.TTL(ttl), cache.StaleFor(staleFor), cache.FetchOnMiss(false))
	// A clean start on a Redis that an earlier run left entries in.
	if err := tweets.ForgetAll(ctx); err != nil {
		return err
	}

	start := time.Now()
	// read reads the user's tweets through the memo and prints how it went:
	// which counter of the memo moved tells a hit from a stale hit.
	read := func(label string) (Timeline, error) {
		before := m.Stats().ByName["memo:tweets"]
		t0 := time.Now()
		tl, err := tweets.Get(ctx, "gopher")
		took := time.Since(t0)
		after := m.Stats().ByName["memo:tweets"]
		kind := "hit"
		switch {
		case after.StaleHits > before.StaleHits:
			kind = "stale hit"
		case after.Misses > before.Misses:
			kind = "miss"
		}
		what := describe(tl)
		if err != nil {
			what = err.Error()
		}
		fmt.Printf("  t=%5.2fs  %-9s %-10s %9v  %s\n",
			time.Since(start).Seconds(), label, kind, took.Round(time.Microsecond), what)
		return tl, err
	}

	t0 := time.Now()
	direct, err := fetchTweets(ctx, "ken")
	if err != nil {
		return err
	}
	fmt.Printf("a direct upstream call, without the cache: %v (%s)\n", time.Since(t0).Round(time.Millisecond), describe(direct))

	fmt.Printf("\n-- cold: FetchOnMiss(false) answers at once; the fetch runs in the background --\n")
	if _, err := read("read"); !errors.Is(err, cache.ErrMiss) {
		return fmt.Errorf("a cold read: got %v, want cache.ErrMiss", err)
	}
	var first Timeline
	for {
		if err := pause(ctx, 100*time.Millisecond); err != nil {
			return err
		}
		tl, err := read("poll")
		if err == nil {
			first = tl
			break
		}
		if !errors.Is(err, cache.ErrMiss) {
			return err
		}
	}

	fmt.Printf("\n-- fresh (TTL %v): hits --\n", ttl)
	for range 3 {
		if _, err := read("read"); err != nil {
			return err
		}
	}

	wait := time.Until(first.FetchedAt.Add(ttl + 100*time.Millisecond))
	fmt.Printf("\n... %v later, past the TTL ...\n", wait.Round(10*time.Millisecond))
	if err := pause(ctx, wait); err != nil {
		return err
	}

	fmt.Printf("\n-- stale (StaleFor %v): the old tweets at once, one refresh in the background --\n", staleFor)
	callsBefore := up.calls.Load()
	if _, err := read("read"); err != nil {
		return err
	}
	// A burst of readers while the refresh runs: none waits for it, and
	// none asks for another.
	var slowest atomic.Int64
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			t0 := time.Now()
			if _, err := tweets.Get(ctx, "gopher"); err != nil {
				return
			}
			d := int64(time.Since(t0))
			for {
				s := slowest.Load()
				if d <= s || slowest.CompareAndSwap(s, d) {
					break
				}
			}
		})
	}
	wg.Wait()
	fmt.Printf("  50 concurrent readers: the slowest answered in %v; upstream requests since the TTL ended: %d\n",
		time.Duration(slowest.Load()).Round(time.Microsecond), up.calls.Load()-callsBefore)
	for {
		if err := pause(ctx, 100*time.Millisecond); err != nil {
			return err
		}
		tl, err := read("poll")
		if err != nil {
			return err
		}
		if tl.FetchedAt.After(first.FetchedAt) {
			break
		}
	}

	// Close waits for the background work, so that the counters are final.
	if err := m.Close(); err != nil {
		return err
	}
	c := m.Stats().ByName["memo:tweets"]
	fmt.Printf("\n-- stats of memo:tweets --\n")
	fmt.Printf("  hits %d, stale hits %d, misses %d\n", c.Hits, c.StaleHits, c.Misses)
	fmt.Printf("  background refreshes: started %d, succeeded %d, failed %d, dropped %d\n",
		c.RefreshesStarted, c.RefreshesSucceeded, c.RefreshesFailed, c.RefreshesDropped)
	fmt.Printf("  upstream requests: %d (1 direct, %d through the cache) for %d reads\n",
		up.calls.Load(), up.calls.Load()-1, c.Hits+c.StaleHits+c.Misses)
	return nil
}

// describe sums a timeline up in a line.
func describe(tl Timeline) string {
	if len(tl.Tweets) == 0 {
		return "no tweets"
	}
	return fmt.Sprintf("newest %q, fetched %s", tl.Tweets[0].Text, tl.FetchedAt.Format("15:04:05.000"))
}

// pause waits for d, or until ctx ends (Ctrl-C), and then returns ctx's error.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
