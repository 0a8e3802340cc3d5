// Package otelcache reports a stockpot Manager's events to OpenTelemetry:
// metrics for every event, per cache name, and spans for loads,
// invalidations and locks that nest under the caller's span.
//
//	obs, err := otelcache.NewObserver(nil) // the global providers
//	if err != nil {
//		return err
//	}
//	m, err := cache.New(rdb, &cache.Options{Observer: obs})
//
// It is a module of its own, so that only the programs that use it depend
// on OpenTelemetry.
package otelcache

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stockpot-go/cache"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/stockpot-go/cache/otelcache"

// The attributes of the metrics and spans.
const (
	AttrName  = attribute.Key("cache.name")  // "keys", "hash:NAME", "memo:NAME", "locks"
	AttrHit   = attribute.Key("cache.hit")   // false on a load's span: the value was not in the cache
	AttrTier  = attribute.Key("cache.tier")  // where a load's value came from: "loader"
	AttrError = attribute.Key("cache.error") // on stockpot.load.duration: whether the loader failed
	AttrKind  = attribute.Key("cache.invalidation.kind")
	AttrState = attribute.Key("cache.breaker.state")
)

// Options configure an Observer.
type Options struct {
	// MeterProvider makes the Observer's meter.
	//
	// default: otel.GetMeterProvider()
	MeterProvider metric.MeterProvider

	// TracerProvider makes the Observer's tracer.
	//
	// default: otel.GetTracerProvider()
	TracerProvider trace.TracerProvider
}

// An Observer is a cache.ContextObserver that records metrics and spans;
// give it to cache.Options.Observer. Its metrics are:
//
//   - stockpot.events{cache.name, cache.event}: a counter of every event
//     the Manager counts (hit, local_hit, miss, load, load_error,
//     degraded, lock_wait, refresh_dropped... see cache.EventKind);
//   - stockpot.load.duration{cache.name, cache.error}: a histogram of
//     loader calls, in seconds;
//   - stockpot.invalidations{cache.invalidation.kind}: targets invalidated;
//   - stockpot.breaker.state{cache.breaker.state}: 1 for the circuit
//     breaker's last state ("closed" until the first change), 0 for the
//     others.
//
// Its spans, children of the span in the caller's context: "stockpot.load"
// for each loader call (from its start to its end, with cache.name,
// cache.hit=false, cache.tier="loader", and the loader's error as the
// span's status), "stockpot.invalidate" for each kind of target of an
// Invalidate call, "stockpot.lock" for each lock obtained (waits included)
// and an event "stockpot.lock.wait" on the caller's span for each attempt
// that found the lock held.
type Observer struct {
	tracer       trace.Tracer
	events       metric.Int64Counter
	loadDuration metric.Float64Histogram
	invalidated  metric.Int64Counter
	breaker      atomic.Value // string, the last state
	attrs        sync.Map     // attrKey -> metric.MeasurementOption, built once per name and event
}

type attrKey struct {
	kind cache.EventKind
	name string
}

// NewObserver returns an Observer; a nil opts is the defaults.
func NewObserver(opts *Options) (*Observer, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MeterProvider == nil {
		o.MeterProvider = otel.GetMeterProvider()
	}
	if o.TracerProvider == nil {
		o.TracerProvider = otel.GetTracerProvider()
	}
	meter := o.MeterProvider.Meter(ScopeName)
	obs := &Observer{tracer: o.TracerProvider.Tracer(ScopeName)}
	obs.breaker.Store("closed")
	var err error
	if obs.events, err = meter.Int64Counter("stockpot.events", metric.WithUnit("{event}"),
		metric.WithDescription("Events a stockpot Manager counts (hits, misses, loads...), by cache name and event.")); err != nil {
		return nil, err
	}
	if obs.loadDuration, err = meter.Float64Histogram("stockpot.load.duration", metric.WithUnit("s"),
		metric.WithDescription("How long loader calls took.")); err != nil {
		return nil, err
	}
	if obs.invalidated, err = meter.Int64Counter("stockpot.invalidations", metric.WithUnit("{target}"),
		metric.WithDescription("Targets invalidated, by kind of target.")); err != nil {
		return nil, err
	}
	if _, err = meter.Int64ObservableGauge("stockpot.breaker.state",
		metric.WithDescription("1 for the circuit breaker's state, 0 for the others."),
		metric.WithInt64Callback(func(_ context.Context, r metric.Int64Observer) error {
			state := obs.breaker.Load().(string)
			for _, s := range []string{"closed", "half-open", "open"} {
				v := int64(0)
				if s == state {
					v = 1
				}
				r.Observe(v, metric.WithAttributes(AttrState.String(s)))
			}
			return nil
		})); err != nil {
		return nil, err
	}
	return obs, nil
}

// Observe records an event told without a context.
func (o *Observer) Observe(e cache.Event) {
	o.ObserveContext(context.Background(), e)
}

// ObserveContext records an event of a call under ctx: its metrics, and
// its span as a child of ctx's.
func (o *Observer) ObserveContext(ctx context.Context, e cache.Event) {
	switch e.Kind {
	case cache.EventInvalidate:
		kind := AttrKind.String(e.Name)
		o.invalidated.Add(ctx, int64(e.N), metric.WithAttributes(kind))
		o.span(ctx, "stockpot.invalidate", e.Duration, nil, kind, attribute.Int64("cache.invalidation.targets", int64(e.N)))
		return
	case cache.EventBreakerState:
		o.breaker.Store(e.Name)
		return
	}
	o.events.Add(ctx, int64(e.N), o.attributes(e.Kind, e.Name))
	switch e.Kind {
	case cache.EventLoad:
		o.loadDuration.Record(ctx, e.Duration.Seconds(), metric.WithAttributes(AttrName.String(e.Name), AttrError.Bool(failed(e.Err))))
		o.span(ctx, "stockpot.load", e.Duration, e.Err, AttrName.String(e.Name), AttrHit.Bool(false), AttrTier.String("loader"))
	case cache.EventLockObtained:
		o.span(ctx, "stockpot.lock", e.Duration, nil, AttrName.String(e.Name))
	case cache.EventLockWait:
		trace.SpanFromContext(ctx).AddEvent("stockpot.lock.wait", trace.WithAttributes(AttrName.String(e.Name)))
	}
}

// span records a span that ended now and lasted d, under ctx's span.
func (o *Observer) span(ctx context.Context, name string, d time.Duration, err error, attrs ...attribute.KeyValue) {
	end := time.Now()
	_, s := o.tracer.Start(ctx, name, trace.WithTimestamp(end.Add(-d)), trace.WithAttributes(attrs...),
		trace.WithSpanKind(trace.SpanKindInternal))
	if failed(err) {
		s.RecordError(err)
		s.SetStatus(codes.Error, err.Error())
	}
	s.End(trace.WithTimestamp(end))
}

// failed says whether a loader's error is a failure: ErrNotFound is an
// answer.
func failed(err error) bool {
	return err != nil && !errors.Is(err, cache.ErrNotFound)
}

// attributes returns the measurement option of an event of kind k for
// name, made once.
func (o *Observer) attributes(k cache.EventKind, name string) metric.MeasurementOption {
	key := attrKey{k, name}
	if a, ok := o.attrs.Load(key); ok {
		return a.(metric.MeasurementOption)
	}
	a := metric.WithAttributeSet(attribute.NewSet(AttrName.String(name), attribute.String("cache.event", k.String())))
	o.attrs.Store(key, a)
	return a
}
