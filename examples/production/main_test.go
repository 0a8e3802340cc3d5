package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the exporter's and the test's
// goroutines.
type syncBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestProduction runs the service, reads a price twice, scrapes /metrics,
// and checks the spans: the load's and Redis's under the request's.
func TestProduction(t *testing.T) {
	t.Setenv("REDIS_ADDR", "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	spans := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln, spans) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("run did not return within 20s of its context's end")
		}
	}()
	client := &http.Client{Timeout: 20 * time.Second}
	get := func(path string) string {
		t.Helper()
		resp, err := client.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	if got := get("/price?item=gelato"); got != "600\n" {
		t.Errorf("price = %q, want 600", got)
	}
	get("/price?item=gelato")
	metrics := get("/metrics")
	// The first read loads (the second hits, unless the first one's store
	// ran out of its time budget on a cold, busy start: then it loads too).
	for _, want := range []string{`stockpot_loads_total{name="memo:price"} `, `stockpot_misses_total{name="memo:price"} `} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Each span with its parent: the load's and Redis's spans are the
	// request's children.
	type span struct {
		Name        string
		SpanContext struct{ SpanID string }
		Parent      struct{ SpanID string }
	}
	var all []span
	dec := json.NewDecoder(strings.NewReader(spans.String()))
	for dec.More() {
		var s span
		if err := dec.Decode(&s); err != nil {
			t.Fatalf("the exported spans: %v", err)
		}
		all = append(all, s)
	}
	requests := map[string]bool{}
	for _, s := range all {
		if s.Name == "GET /price" {
			requests[s.SpanContext.SpanID] = true
		}
	}
	under := map[string]int{}
	for _, s := range all {
		if requests[s.Parent.SpanID] {
			under[s.Name]++
		}
	}
	if len(requests) != 2 || under["stockpot.load"] < 1 || under["mget"] < 2 {
		t.Errorf("%d requests; under them %v, want a stockpot.load and an mget per request; spans: %s",
			len(requests), under, names(spans.String()))
	}
}

// names returns the names of the spans in the exporter's output.
func names(out string) string {
	var n []string
	for _, line := range strings.Split(out, "\n") {
		if _, rest, ok := strings.Cut(line, `{"Name":"`); ok {
			name, _, _ := strings.Cut(rest, `"`)
			n = append(n, name)
		}
	}
	return strings.Join(n, ", ")
}
