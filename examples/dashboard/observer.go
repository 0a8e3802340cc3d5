package main

import (
	"expvar"

	"github.com/stockpot-go/cache"
)

// expvarObserver feeds the Manager's events to expvar, which serves them
// as JSON at /debug/vars:
//
//	"stockpot": {
//	  "events":       {"hit": {"keys": 9, "hash:outlet_metrics": 240}, "load": {...}, ...},
//	  "load_seconds": {"keys": 0.0061, "hash:outlet_metrics": 0.0532, ...},
//	  "breaker":      "closed"
//	}
//
// Observe runs on the cache's hot path: it only adds to counters that
// expvar keeps in sync.Maps and atomics, and takes no lock of its own.
type expvarObserver struct {
	root        *expvar.Map    // everything below, for expvar.Publish
	byKind      []*expvar.Map  // indexed by cache.EventKind: counts by name
	loadSeconds *expvar.Map    // time spent in loaders, by name
	breaker     *expvar.String // the circuit breaker's state
}

// newExpvarObserver returns an observer with every counter at zero. The
// caller publishes its root with expvar.Publish, once: expvar's names are
// the whole process's.
func newExpvarObserver() *expvarObserver {
	o := &expvarObserver{root: new(expvar.Map), loadSeconds: new(expvar.Map), breaker: new(expvar.String)}
	o.breaker.Set("closed")
	events := new(expvar.Map)
	// Every kind the library names; String is "unknown" past the last.
	for k := cache.EventKind(0); k.String() != "unknown"; k++ {
		byName := new(expvar.Map)
		events.Set(k.String(), byName)
		o.byKind = append(o.byKind, byName)
	}
	o.root.Set("events", events)
	o.root.Set("load_seconds", o.loadSeconds)
	o.root.Set("breaker", o.breaker)
	return o
}

// Observe counts e. For cache.EventInvalidate, e.Name is the kind of
// target ("key", "field", "tag"...); for cache.EventBreakerState, the new
// state.
func (o *expvarObserver) Observe(e cache.Event) {
	if int(e.Kind) < len(o.byKind) {
		o.byKind[e.Kind].Add(e.Name, int64(e.N))
	}
	switch e.Kind {
	case cache.EventLoad:
		o.loadSeconds.AddFloat(e.Name, e.Duration.Seconds())
	case cache.EventBreakerState:
		o.breaker.Set(e.Name)
	}
}

// LoadSeconds returns the seconds spent in the loaders of name so far.
func (o *expvarObserver) LoadSeconds(name string) float64 {
	if f, ok := o.loadSeconds.Get(name).(*expvar.Float); ok {
		return f.Value()
	}
	return 0
}
