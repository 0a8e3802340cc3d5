package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/stockpot-go/cache"
)

// runDemo is the scripted tour printed at start: a cold read, a warm one,
// warming, an invoice submitted and cancelled, and the counters.
func runDemo(ctx context.Context, w io.Writer, d *Dashboard, obs *expvarObserver) error {
	p := printer{w}
	all := LeaderboardQuery{Limit: 10}

	p.section("1. the first read of the dashboard: every part misses, is computed and stored")
	v, err := d.Read(ctx, all)
	if err != nil {
		return err
	}
	p.view(v, "", OutletMetrics{})

	p.section("2. the same read again: every part is a cache hit")
	if v, err = d.Read(ctx, all); err != nil {
		return err
	}
	p.view(v, "", OutletMetrics{})

	p.section("3. warming (at start-up, then daily): m.WarmAll overwrites in place, readers never miss")
	report, err := d.m.WarmAll(ctx)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(report.String(), "\n") {
		fmt.Fprintf(w, "  %s\n", line)
	}

	const outlet = "Pune-03"
	before := v.Outlets[slices.IndexFunc(v.Outlets, func(m OutletMetrics) bool { return m.Outlet == outlet })]
	p.section(fmt.Sprintf("4. an invoice is submitted at %s: m.Emit(ctx, %q, invoice)", outlet, eventSubmitted))
	start := time.Now()
	inv, err := d.Submit(ctx, NewInvoice{Outlet: outlet, Item: "Belgian Chocolate", Qty: 2})
	if err != nil {
		return err
	}
	p.invoice(inv, "submitted", time.Since(start), d.invalidation(ctx, inv))

	p.section("5. the next read: only what the invoice changed is computed again")
	if v, err = d.Read(ctx, all); err != nil {
		return err
	}
	p.view(v, outlet, before)
	fmt.Fprintln(w, "  and each region's leaderboard, a memo entry tagged with its region (cache.TagsFor):")
	for _, r := range regions {
		rows, s, err := d.Leaderboard(ctx, LeaderboardQuery{Region: r, Limit: 10})
		if err != nil {
			return err
		}
		why := "its tag " + regionTag(r) + " was left alone"
		if r == inv.Region {
			why = "tag " + regionTag(r) + " invalidated"
		}
		if len(rows) > 0 {
			why = fmt.Sprintf("#1 %s %s; %s", rows[0].Outlet, rupees(rows[0].Revenue), why)
		}
		p.served(s, why)
	}

	p.section(fmt.Sprintf("6. the invoice is cancelled: m.Emit(ctx, %q, invoice)", eventCancelled))
	start = time.Now()
	if inv, err = d.Cancel(ctx, inv.ID); err != nil {
		return err
	}
	p.invoice(inv, "cancelled", time.Since(start), d.invalidation(ctx, inv))
	for _, note := range []string{"cached like any other value", "a hit: 0 is a value, not a miss"} {
		n, s, err := d.LiveOrders(ctx)
		if err != nil {
			return err
		}
		p.served(s, plural(n, "order")+" today, "+note)
	}

	p.section("7. m.Stats() by name; load time summed by the Observer")
	p.stats(d.m.Stats(), obs)
	return nil
}

// printer prints the demo in aligned columns.
type printer struct{ w io.Writer }

func (p printer) section(title string) { fmt.Fprintf(p.w, "\n-- %s --\n", title) }

// served prints how a part of a read was served, and what it holds.
func (p printer) served(s Served, detail string) {
	fmt.Fprintf(p.w, "  %-21s %-20s %8s  %s\n", s.Part, how(s), short(s.Took), detail)
}

// view prints a read of the dashboard, part by part. With a focus outlet,
// the outlets' line shows its figures before and after.
func (p printer) view(v View, focus string, before OutletMetrics) {
	s := v.Summary
	details := []string{
		fmt.Sprintf("%s orders, %s, avg %s", num(s.Orders), rupees(s.Revenue), rupeesF(s.AvgOrder)),
		"",
		"none sold in 7 days",
		plural(v.LiveOrders, "order") + " today",
		"no rows",
	}
	orders := 0
	for _, m := range v.Outlets {
		orders += m.Orders
	}
	details[1] = fmt.Sprintf("%d outlets, %s orders in all", len(v.Outlets), num(orders))
	for _, m := range v.Outlets {
		if m.Outlet == focus {
			details[1] = fmt.Sprintf("%s: %s → %s orders, %s → %s",
				focus, num(before.Orders), num(m.Orders), rupees(before.Revenue), rupees(m.Revenue))
		}
	}
	if len(v.Trending) > 0 {
		details[2] = fmt.Sprintf("#1 %s, %s scoops in 7 days", v.Trending[0].Item, num(v.Trending[0].Scoops))
	}
	if rows := v.Leaderboard.Rows; len(rows) > 0 {
		details[4] = fmt.Sprintf("#1 %s %s", rows[0].Outlet, rupees(rows[0].Revenue))
	}
	for i, s := range v.Served {
		p.served(s, details[i])
	}
	fmt.Fprintf(p.w, "  %-21s %-20s %8s\n", "the whole read", "", short(v.Took))
}

// invoice prints an invoice event and the targets its rule invalidated.
func (p printer) invoice(inv Invoice, what string, took time.Duration, targets []cache.Target) {
	l := inv.Lines[0]
	fmt.Fprintf(p.w, "  invoice #%d %s: %s (%s), %d × %s, %s\n",
		inv.ID, what, inv.Outlet, inv.Region, l.Qty, l.Item, rupees(inv.Total))
	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.String()
	}
	fmt.Fprintf(p.w, "  recorded and invalidated in %s:\n    %s\n", short(took), strings.Join(names, ", "))
}

// stats prints the counters of every name that has any.
func (p printer) stats(st cache.Stats, obs *expvarObserver) {
	fmt.Fprintf(p.w, "  %-28s %6s %7s %6s %5s %10s\n", "name", "hits", "misses", "loads", "sets", "load time")
	for _, name := range st.Names() {
		c := st.ByName[name]
		if c == (cache.Counters{}) {
			continue
		}
		took := time.Duration(obs.LoadSeconds(name) * float64(time.Second))
		fmt.Fprintf(p.w, "  %-28s %6d %7d %6d %5d %10s\n", name, c.Hits+c.LocalHits, c.Misses, c.Loads, c.Sets, short(took))
	}
	inv := st.Invalidations
	var kinds []string
	for _, k := range slices.Sorted(maps.Keys(inv.ByKind)) {
		if n := inv.ByKind[k]; n > 0 {
			kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
		}
	}
	fmt.Fprintf(p.w, "  invalidations: %d events; targets: %s; entries removed: %d\n",
		inv.Events, strings.Join(kinds, ", "), inv.Removed)
}

// how says how a part was served: computed, or answered by the cache.
func how(s Served) string {
	switch {
	case s.Computed+s.Cached == 1 && s.Computed == 1:
		return "computed"
	case s.Computed+s.Cached == 1:
		return "cache hit"
	case s.Computed == 0:
		return fmt.Sprintf("%d hits", s.Cached)
	case s.Cached == 0:
		return fmt.Sprintf("%d computed", s.Computed)
	}
	return fmt.Sprintf("%d computed, %d hits", s.Computed, s.Cached)
}

// short formats d with three significant digits or so.
func short(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// num formats n with thousands separators.
func num[T int | int64](n T) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func rupees(n int64) string    { return "₹" + num(n) }
func rupeesF(f float64) string { return fmt.Sprintf("₹%.2f", f) }

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return num(n) + " " + noun + "s"
}
