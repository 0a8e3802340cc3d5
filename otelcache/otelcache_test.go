package otelcache_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stockpot-go/cache"
	"github.com/stockpot-go/cache/cachetest"
	"github.com/stockpot-go/cache/otelcache"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

type setup struct {
	env     *cachetest.Env
	reader  *sdkmetric.ManualReader
	spans   *tracetest.SpanRecorder
	tracer  *sdktrace.TracerProvider
	metrics *sdkmetric.MeterProvider
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	s := &setup{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	s.metrics = sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	s.tracer = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	obs, err := otelcache.NewObserver(&otelcache.Options{MeterProvider: s.metrics, TracerProvider: s.tracer})
	require.NoError(t, err)
	s.env = cachetest.New(t, &cache.Options{Observer: obs})
	return s
}

// collect returns the metrics read now, by instrument name.
func (s *setup) collect(t *testing.T) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, s.reader.Collect(t.Context(), &rm))
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		require.Equal(t, otelcache.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// sumOf returns the value of the Int64 sum's point with exactly attrs.
func sumOf(t *testing.T, agg metricdata.Aggregation, attrs ...attribute.KeyValue) int64 {
	t.Helper()
	sum, ok := agg.(metricdata.Sum[int64])
	require.True(t, ok, "not an int64 sum: %T", agg)
	want := attribute.NewSet(attrs...)
	for _, p := range sum.DataPoints {
		if p.Attributes.Equals(&want) {
			return p.Value
		}
	}
	return 0
}

// TestLoadSpansNestUnderTheCaller checks that a load's span is a child of
// the caller's span, spans the loader's run, and carries the attributes
// and the error; and that the metrics count per name.
func TestLoadSpansNestUnderTheCaller(t *testing.T) {
	s := newSetup(t)
	errBoom := errors.New("upstream down")
	board := cache.Memoize(s.env.Manager, "board", func(ctx context.Context, region string) (int, error) {
		if region == "" {
			return 0, errBoom
		}
		time.Sleep(20 * time.Millisecond)
		return len(region), nil
	})
	ctx, request := s.tracer.Tracer("test").Start(t.Context(), "GET /dashboard")
	began := time.Now()
	_, err := board.Get(ctx, "Mumbai")
	require.NoError(t, err)
	returned := time.Now()
	_, err = board.Get(ctx, "Mumbai") // a hit: no span, a count
	require.NoError(t, err)
	_, err = board.Get(ctx, "")
	require.ErrorIs(t, err, errBoom)
	request.End()

	var loads []sdktrace.ReadOnlySpan
	for _, sp := range s.spans.Ended() {
		if sp.Name() == "stockpot.load" {
			loads = append(loads, sp)
		}
	}
	require.Len(t, loads, 2, "a span per loader call")
	ok, bad := loads[0], loads[1]
	require.Equal(t, request.SpanContext().SpanID(), ok.Parent().SpanID(), "the load's parent is the request's span")
	require.Equal(t, request.SpanContext().TraceID(), ok.SpanContext().TraceID())
	require.GreaterOrEqual(t, ok.EndTime().Sub(ok.StartTime()), 20*time.Millisecond, "the span covers the loader's run")
	require.False(t, ok.StartTime().Before(began), "the span starts before the call did")
	require.False(t, ok.EndTime().After(returned), "the span ends after the call returned")
	require.Contains(t, ok.Attributes(), otelcache.AttrName.String("memo:board"))
	require.Contains(t, ok.Attributes(), otelcache.AttrHit.Bool(false))
	require.Equal(t, codes.Unset, ok.Status().Code)
	require.Equal(t, codes.Error, bad.Status().Code, "a failed load's span is an error")
	require.Equal(t, request.SpanContext().SpanID(), bad.Parent().SpanID())

	m := s.collect(t)
	name := otelcache.AttrName.String("memo:board")
	event := func(e string) attribute.KeyValue { return attribute.String("cache.event", e) }
	require.EqualValues(t, 2, sumOf(t, m["stockpot.events"], name, event("miss")))
	require.EqualValues(t, 1, sumOf(t, m["stockpot.events"], name, event("hit")))
	require.EqualValues(t, 2, sumOf(t, m["stockpot.events"], name, event("load")))
	require.EqualValues(t, 1, sumOf(t, m["stockpot.events"], name, event("load_error")))
	hist, isHist := m["stockpot.load.duration"].(metricdata.Histogram[float64])
	require.True(t, isHist, "stockpot.load.duration is a float64 histogram")
	var counts []uint64
	for _, p := range hist.DataPoints {
		counts = append(counts, p.Count)
	}
	require.ElementsMatch(t, []uint64{1, 1}, counts, "one load that failed and one that did not")
}

// TestInvalidateAndLockSpans checks the spans of an invalidation and a
// lock, their parents, and the lock wait event on the caller's span.
func TestInvalidateAndLockSpans(t *testing.T) {
	s := newSetup(t)
	m := s.env.Manager
	ctx, request := s.tracer.Tracer("test").Start(t.Context(), "POST /invoice")
	require.NoError(t, m.Invalidate(ctx, cache.Key("a"), cache.Key("b"), cache.Tag("sales")))
	l, err := m.TryLock(ctx, "job", time.Second)
	require.NoError(t, err)
	_, err = m.TryLock(ctx, "job", time.Second)
	require.ErrorIs(t, err, cache.ErrNotObtained)
	require.NoError(t, l.Release(ctx))
	request.End()

	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, sp := range s.spans.Ended() {
		byName[sp.Name()] = append(byName[sp.Name()], sp)
	}
	require.Len(t, byName["stockpot.invalidate"], 2, "a span per kind of target")
	for _, sp := range byName["stockpot.invalidate"] {
		require.Equal(t, request.SpanContext().SpanID(), sp.Parent().SpanID())
	}
	require.Len(t, byName["stockpot.lock"], 1)
	require.Equal(t, request.SpanContext().SpanID(), byName["stockpot.lock"][0].Parent().SpanID())
	require.Contains(t, byName["stockpot.lock"][0].Attributes(), otelcache.AttrName.String("locks"))
	req := byName["POST /invoice"][0]
	require.Len(t, req.Events(), 1, "the lock wait, as an event of the caller's span")
	require.Equal(t, "stockpot.lock.wait", req.Events()[0].Name)

	metrics := s.collect(t)
	require.EqualValues(t, 2, sumOf(t, metrics["stockpot.invalidations"], otelcache.AttrKind.String("key")))
	require.EqualValues(t, 1, sumOf(t, metrics["stockpot.invalidations"], otelcache.AttrKind.String("tag")))
	locks := otelcache.AttrName.String("locks")
	require.EqualValues(t, 1, sumOf(t, metrics["stockpot.events"], locks, attribute.String("cache.event", "lock_obtained")))
	require.EqualValues(t, 1, sumOf(t, metrics["stockpot.events"], locks, attribute.String("cache.event", "lock_wait")))
}

// TestBreakerState checks the breaker gauge before and after the breaker
// opens.
func TestBreakerState(t *testing.T) {
	s := newSetup(t)
	gauge := func() map[string]int64 {
		g, ok := s.collect(t)["stockpot.breaker.state"].(metricdata.Gauge[int64])
		require.True(t, ok, "stockpot.breaker.state is an int64 gauge")
		out := map[string]int64{}
		for _, p := range g.DataPoints {
			v, _ := p.Attributes.Value(otelcache.AttrState)
			out[v.AsString()] = p.Value
		}
		return out
	}
	require.Equal(t, map[string]int64{"closed": 1, "half-open": 0, "open": 0}, gauge())
	s.env.Redis.Close() // Redis down: reads fail and the breaker opens
	var v string
	for range 10 {
		_ = s.env.Manager.Get(t.Context(), "k", &v)
	}
	require.Equal(t, "open", s.env.Manager.Stats().Breaker, "ten failed reads did not open the breaker")
	require.Equal(t, map[string]int64{"closed": 0, "half-open": 0, "open": 1}, gauge())
}
