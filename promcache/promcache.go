// Package promcache exports a stockpot Manager's counters to Prometheus.
//
// A Collector reads m.Stats() when Prometheus scrapes it, so it costs
// nothing per cache call:
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(promcache.NewCollector(m, nil))
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Every counter of cache.Counters is a counter named after it, with a
// "name" label for the cache name ("keys", "hash:NAME", "memo:NAME",
// "locks"): stockpot_hits_total{name="memo:leaderboard"}, and so on.
// Invalidations, the local tier and the circuit breakers have metrics of
// their own (see NewCollector). This package is a module of its own, so
// that only the programs that use it depend on Prometheus's client.
package promcache

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stockpot-go/cache"
)

// Options configure a Collector.
type Options struct {
	// Namespace is put before every metric name, with an underscore.
	//
	// default: "stockpot"
	Namespace string

	// ConstLabels are added to every metric, to tell apart the Managers of
	// one process (prometheus.Labels{"manager": "sessions"}).
	//
	// default: none
	ConstLabels prometheus.Labels
}

// A Collector is a prometheus.Collector of one Manager's Stats.
type Collector struct {
	m        *cache.Manager
	counters []counterDesc
	inv      *prometheus.Desc // by kind
	removed  *prometheus.Desc
	events   *prometheus.Desc // by known
	pending  *prometheus.Desc
	retried  *prometheus.Desc
	given    *prometheus.Desc
	local    []localDesc
	breaker  *prometheus.Desc // by state
	node     *prometheus.Desc // by node and state
}

type counterDesc struct {
	desc *prometheus.Desc
	get  func(cache.Counters) uint64
}

type localDesc struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	get  func(cache.LocalStats) float64
}

// counterMetrics names a metric for each field of cache.Counters, in the
// order of the fields.
var counterMetrics = []struct {
	name, help string
	get        func(cache.Counters) uint64
}{
	{"hits_total", "Reads answered from Redis with a fresh value.", func(c cache.Counters) uint64 { return c.Hits }},
	{"stale_hits_total", "Reads answered with a stale value while it is refreshed.", func(c cache.Counters) uint64 { return c.StaleHits }},
	{"local_hits_total", "Reads answered by the in-process tier.", func(c cache.Counters) uint64 { return c.LocalHits }},
	{"misses_total", "Reads that found nothing usable.", func(c cache.Counters) uint64 { return c.Misses }},
	{"negative_hits_total", "Reads answered with a remembered ErrNotFound.", func(c cache.Counters) uint64 { return c.NegativeHits }},
	{"loads_total", "Loader calls, counted as they start.", func(c cache.Counters) uint64 { return c.Loads }},
	{"load_errors_total", "Loader calls that failed or panicked.", func(c cache.Counters) uint64 { return c.LoadErrors }},
	{"shared_waits_total", "Callers that waited for a load another caller of this process started.", func(c cache.Counters) uint64 { return c.SharedWaits }},
	{"lease_waits_total", "Loads that waited for another process's lease instead of loading.", func(c cache.Counters) uint64 { return c.LeaseWaits }},
	{"voided_stores_total", "Loaded values not stored because an invalidation voided their lease.", func(c cache.Counters) uint64 { return c.VoidedStores }},
	{"sets_total", "Values written.", func(c cache.Counters) uint64 { return c.Sets }},
	{"deletes_total", "Entries deleted.", func(c cache.Counters) uint64 { return c.Deletes }},
	{"decode_errors_total", "Stored values that did not decode.", func(c cache.Counters) uint64 { return c.DecodeErrors }},
	{"redis_errors_total", "Redis calls that failed.", func(c cache.Counters) uint64 { return c.RedisErrors }},
	{"degraded_reads_total", "Loaded reads answered by the loader alone while Redis failed.", func(c cache.Counters) uint64 { return c.Degraded }},
	{"refreshes_started_total", "Background refreshes that took the lease and ran the loader.", func(c cache.Counters) uint64 { return c.RefreshesStarted }},
	{"refreshes_succeeded_total", "Background refreshes that stored a new value.", func(c cache.Counters) uint64 { return c.RefreshesSucceeded }},
	{"refreshes_failed_total", "Background refreshes that failed; the stale value stays.", func(c cache.Counters) uint64 { return c.RefreshesFailed }},
	{"refreshes_dropped_total", "Background refreshes not queued because the queue was full.", func(c cache.Counters) uint64 { return c.RefreshesDropped }},
	{"early_refreshes_total", "Refreshes scheduled early by EarlyRefresh.", func(c cache.Counters) uint64 { return c.EarlyRefreshes }},
	{"locks_obtained_total", "Locks granted.", func(c cache.Counters) uint64 { return c.LocksObtained }},
	{"lock_waits_total", "Attempts to take a lock that found it held.", func(c cache.Counters) uint64 { return c.LockWaits }},
	{"locks_lost_total", "Locks found expired or taken over by their holder.", func(c cache.Counters) uint64 { return c.LocksLost }},
}

// The states a breaker reports, each a series of the breaker gauges.
var breakerStates = []string{"closed", "half-open", "open", "off"}

// NewCollector returns a Collector of m's Stats; register it with a
// prometheus.Registerer. A nil opts is the defaults. Its metrics are, with
// the namespace before each:
//
//   - a counter per field of cache.Counters, labelled by name:
//     hits_total, misses_total, loads_total, degraded_reads_total,
//     lock_waits_total... (see the Help of each);
//   - invalidations_total{kind}, invalidation_entries_removed_total,
//     invalidation_events_total{known}, and for failed invalidations
//     invalidations_pending, invalidations_retried_total and
//     invalidations_abandoned_total;
//   - the local tier's local_entries, local_evictions_total,
//     local_clears_total, local_messages_sent_total,
//     local_messages_received_total, local_resubscriptions_total and
//     local_subscribed;
//   - breaker_state{state}, 1 for the state the breaker is in (the least
//     healthy master's on a cluster) and 0 for the others, and on a
//     cluster node_breaker_state{node,state} for each master's.
func NewCollector(m *cache.Manager, opts *Options) *Collector {
	o := Options{Namespace: "stockpot"}
	if opts != nil {
		if opts.Namespace != "" {
			o.Namespace = opts.Namespace
		}
		o.ConstLabels = opts.ConstLabels
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(o.Namespace, "", name), help, labels, o.ConstLabels)
	}
	c := &Collector{m: m}
	for _, cm := range counterMetrics {
		c.counters = append(c.counters, counterDesc{desc: desc(cm.name, cm.help, "name"), get: cm.get})
	}
	c.inv = desc("invalidations_total", "Targets invalidated, by kind of target.", "kind")
	c.removed = desc("invalidation_entries_removed_total", "Entries deleted by invalidations.")
	c.events = desc("invalidation_events_total", "Emit calls; known=\"false\" for events with no rule.", "known")
	c.pending = desc("invalidations_pending", "Targets of failed invalidations waiting to be retried.")
	c.retried = desc("invalidations_retried_total", "Targets of failed invalidations whose retry succeeded.")
	c.given = desc("invalidations_abandoned_total", "Targets of failed invalidations given up.")
	c.local = []localDesc{
		{desc("local_entries", "Entries held by the in-process tier (an estimate)."), prometheus.GaugeValue,
			func(l cache.LocalStats) float64 { return float64(l.Entries) }},
		{desc("local_evictions_total", "Entries the in-process tier evicted for room."), prometheus.CounterValue,
			func(l cache.LocalStats) float64 { return float64(l.Evictions) }},
		{desc("local_clears_total", "Times the whole in-process tier was dropped."), prometheus.CounterValue,
			func(l cache.LocalStats) float64 { return float64(l.Clears) }},
		{desc("local_messages_sent_total", "Invalidation messages published to the other Managers."), prometheus.CounterValue,
			func(l cache.LocalStats) float64 { return float64(l.Sent) }},
		{desc("local_messages_received_total", "Invalidation messages received from the other Managers."), prometheus.CounterValue,
			func(l cache.LocalStats) float64 { return float64(l.Received) }},
		{desc("local_resubscriptions_total", "Subscriptions to the invalidation messages restored after a drop."), prometheus.CounterValue,
			func(l cache.LocalStats) float64 { return float64(l.Resubscriptions) }},
		{desc("local_subscribed", "1 while the in-process tier is in use (subscribed to invalidations), else 0."), prometheus.GaugeValue,
			func(l cache.LocalStats) float64 { return boolValue(l.Subscribed) }},
	}
	c.breaker = desc("breaker_state", "1 for the circuit breaker's state (the least healthy master's on a cluster), 0 for the others.", "state")
	c.node = desc("node_breaker_state", "1 for the state of each master's circuit breaker on a cluster, 0 for the others.", "node", "state")
	return c
}

// Describe sends the descriptors of every metric of the Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d.desc
	}
	for _, d := range []*prometheus.Desc{c.inv, c.removed, c.events, c.pending, c.retried, c.given, c.breaker, c.node} {
		ch <- d
	}
	for _, d := range c.local {
		ch <- d.desc
	}
}

// Collect reads the Manager's Stats and sends a metric for each counter.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.m.Stats()
	for name, counters := range s.ByName {
		for _, d := range c.counters {
			ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(counters)), name)
		}
	}
	inv := s.Invalidations
	for kind, n := range inv.ByKind {
		ch <- prometheus.MustNewConstMetric(c.inv, prometheus.CounterValue, float64(n), kind)
	}
	ch <- prometheus.MustNewConstMetric(c.removed, prometheus.CounterValue, float64(inv.Removed))
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(inv.Events), "true")
	ch <- prometheus.MustNewConstMetric(c.events, prometheus.CounterValue, float64(inv.UnknownEvents), "false")
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(inv.Pending))
	ch <- prometheus.MustNewConstMetric(c.retried, prometheus.CounterValue, float64(inv.Retried))
	ch <- prometheus.MustNewConstMetric(c.given, prometheus.CounterValue, float64(inv.Abandoned))
	for _, d := range c.local {
		ch <- prometheus.MustNewConstMetric(d.desc, d.typ, d.get(s.Local))
	}
	for _, st := range breakerStates {
		ch <- prometheus.MustNewConstMetric(c.breaker, prometheus.GaugeValue, boolValue(s.Breaker == st), st)
	}
	for node, state := range s.Breakers {
		for _, st := range breakerStates {
			ch <- prometheus.MustNewConstMetric(c.node, prometheus.GaugeValue, boolValue(state == st), node, st)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
