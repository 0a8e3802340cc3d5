package main

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"time"
)

// The franchise: a few regions of a dozen outlets each, and the menu they sell.
var regions = []string{"Mumbai", "Pune", "Delhi", "Bengaluru"}

const outletsPerRegion = 12

// MenuItem is one flavour on the menu, with its price in rupees for a scoop.
type MenuItem struct {
	Name  string `json:"name"`
	Price int64  `json:"price"`
}

var menu = []MenuItem{
	{"Alphonso Mango", 140}, {"Belgian Chocolate", 180}, {"Pista Kulfi", 120},
	{"Chikoo", 110}, {"Vanilla Bean", 100}, {"Strawberry", 110},
	{"Butterscotch", 110}, {"Cookies & Cream", 160}, {"Salted Caramel", 170},
	{"Coffee Walnut", 160}, {"Tender Coconut", 130}, {"Sitaphal", 150},
	{"Rose Gulkand", 140}, {"Kesar Badam", 150}, {"Dark Chocolate Sorbet", 170},
	{"Mint Choc Chip", 150},
}

// historyDays is how many days of invoices the generated history holds.
const historyDays = 30

// outletID returns the ID of the n-th outlet (from 1) of region.
func outletID(region string, n int) string { return fmt.Sprintf("%s-%02d", region, n) }

// regionOf maps every outlet ID to its region.
var regionOf = func() map[string]string {
	m := make(map[string]string, len(regions)*outletsPerRegion)
	for _, r := range regions {
		for n := 1; n <= outletsPerRegion; n++ {
			m[outletID(r, n)] = r
		}
	}
	return m
}()

// outletIDs returns every outlet ID, region by region.
func outletIDs() []string {
	ids := make([]string, 0, len(regionOf))
	for _, r := range regions {
		for n := 1; n <= outletsPerRegion; n++ {
			ids = append(ids, outletID(r, n))
		}
	}
	return ids
}

func priceOf(item string) (int64, bool) {
	for _, it := range menu {
		if it.Name == item {
			return it.Price, true
		}
	}
	return 0, false
}

// Line is one line of an invoice.
type Line struct {
	Item   string `json:"item"`
	Qty    int    `json:"qty"`
	Amount int64  `json:"amount"`
}

// Invoice is a sales invoice of an outlet. The store plays the database.
type Invoice struct {
	ID        int       `json:"id"`
	Outlet    string    `json:"outlet"`
	Region    string    `json:"region"`
	Customer  int       `json:"customer"`
	At        time.Time `json:"at"`
	Lines     []Line    `json:"lines"`
	Total     int64     `json:"total"`
	Cancelled bool      `json:"cancelled"`
}

// Store holds the invoices in memory and computes the dashboard's figures
// from them, each with a full scan, as an unindexed query would.
type Store struct {
	mu       sync.RWMutex // protects invoices
	invoices []Invoice    // invoices[i].ID == i+1
	// today is the midnight the generated history ends at: today's orders
	// are the ones submitted while the program runs.
	today time.Time
}

// The errors of Submit and Cancel.
var (
	errBadInvoice = errors.New("bad invoice")
	errNoInvoice  = errors.New("no such invoice")
	errCancelled  = errors.New("invoice already cancelled")
)

// NewInvoice is what a submission gives.
type NewInvoice struct {
	Outlet string `json:"outlet"`
	Item   string `json:"item"`
	Qty    int    `json:"qty"`    // default 1
	Amount int64  `json:"amount"` // default the menu price × qty
}

// Generate returns a store of n invoices over the historyDays days before
// today, the same ones on every run (only the dates move with today).
func Generate(n int, today time.Time) *Store {
	r := rand.New(rand.NewPCG(2026, 11))
	outlets := outletIDs()

	// Outlets differ in size, flavours in popularity, hours in footfall.
	outletW := make([]float64, len(outlets))
	for i := range outletW {
		outletW[i] = 0.4 + 1.2*r.Float64()
	}
	itemW := make([]float64, len(menu))
	for i, p := range r.Perm(len(menu)) {
		itemW[i] = 1 / math.Pow(float64(p+1), 0.7)
	}
	hourW := []float64{11: 2, 12: 5, 13: 6, 14: 4, 15: 4, 16: 5, 17: 7, 18: 9, 19: 10, 20: 10, 21: 8, 22: 5, 23: 2}
	pickOutlet, pickHour := picker(outletW), picker(hourW)
	// Mango season: over the last ten days, mango sells ever better.
	mango := slices.IndexFunc(menu, func(it MenuItem) bool { return it.Name == "Alphonso Mango" })
	pickItem := make([]func(*rand.Rand) int, historyDays)
	for day := range pickItem {
		w := slices.Clone(itemW)
		if day > historyDays-10 {
			w[mango] *= 1 + float64(day-(historyDays-10))/2
		}
		pickItem[day] = picker(w)
	}

	start := today.AddDate(0, 0, -historyDays)
	invs := make([]Invoice, n)
	for i := range invs {
		day := i * historyDays / n
		at := start.AddDate(0, 0, day).Add(time.Duration(pickHour(r))*time.Hour +
			time.Duration(r.IntN(3600))*time.Second)
		o := outlets[pickOutlet(r)]
		inv := Invoice{Outlet: o, Region: regionOf[o], Customer: 1 + r.IntN(25000), At: at}
		for range 1 + r.IntN(3) + r.IntN(2) {
			it := menu[pickItem[day](r)]
			qty := 1 + r.IntN(3)
			inv.Lines = append(inv.Lines, Line{Item: it.Name, Qty: qty, Amount: it.Price * int64(qty)})
			inv.Total += it.Price * int64(qty)
		}
		invs[i] = inv
	}
	slices.SortStableFunc(invs, func(a, b Invoice) int { return a.At.Compare(b.At) })
	for i := range invs {
		invs[i].ID = i + 1
	}
	return &Store{invoices: invs, today: today}
}

// picker returns a function that draws an index with the given weights.
func picker(weights []float64) func(*rand.Rand) int {
	cum := make([]float64, len(weights))
	total := 0.0
	for i, w := range weights {
		total += w
		cum[i] = total
	}
	return func(r *rand.Rand) int {
		return min(sort.SearchFloat64s(cum, r.Float64()*total), len(cum)-1)
	}
}

// Len returns how many invoices the store holds, and how many lines.
func (s *Store) Len() (invoices, lines int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for i := range s.invoices {
		lines += len(s.invoices[i].Lines)
	}
	return len(s.invoices), lines
}

// Submit records a new invoice, taken now.
func (s *Store) Submit(n NewInvoice) (Invoice, error) {
	region, ok := regionOf[n.Outlet]
	if !ok {
		return Invoice{}, fmt.Errorf("%w: no outlet %q", errBadInvoice, n.Outlet)
	}
	price, ok := priceOf(n.Item)
	if !ok {
		return Invoice{}, fmt.Errorf("%w: %q is not on the menu", errBadInvoice, n.Item)
	}
	if n.Qty == 0 {
		n.Qty = 1
	}
	if n.Amount == 0 {
		n.Amount = price * int64(n.Qty)
	}
	if n.Qty < 0 || n.Qty > 100 || n.Amount < 0 || n.Amount > 1_000_000 {
		return Invoice{}, fmt.Errorf("%w: qty %d, amount %d", errBadInvoice, n.Qty, n.Amount)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inv := Invoice{
		ID:       len(s.invoices) + 1,
		Outlet:   n.Outlet,
		Region:   region,
		Customer: 0, // a walk-in
		At:       time.Now(),
		Lines:    []Line{{Item: n.Item, Qty: n.Qty, Amount: n.Amount}},
		Total:    n.Amount,
	}
	s.invoices = append(s.invoices, inv)
	return inv, nil
}

// Cancel cancels the invoice id.
func (s *Store) Cancel(id int) (Invoice, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id < 1 || id > len(s.invoices) {
		return Invoice{}, fmt.Errorf("%w: %d", errNoInvoice, id)
	}
	inv := &s.invoices[id-1]
	if inv.Cancelled {
		return Invoice{}, fmt.Errorf("%w: %d", errCancelled, id)
	}
	inv.Cancelled = true
	return *inv, nil
}

// Summary is the dashboard's headline: the month's sales.
type Summary struct {
	From            time.Time        `json:"from"`
	Orders          int              `json:"orders"`
	Revenue         int64            `json:"revenue"`
	AvgOrder        float64          `json:"avg_order"`
	Scoops          int              `json:"scoops"`
	Customers       int              `json:"customers"`
	Cancelled       int              `json:"cancelled"`
	RevenueByRegion map[string]int64 `json:"revenue_by_region"`
}

// Summary computes the summary.
func (s *Store) Summary() Summary {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.summary()
}

// WithSummary computes the summary and calls fn with it, holding the
// store's read lock: no invoice is submitted or cancelled until fn returns.
func (s *Store) WithSummary(fn func(Summary) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return fn(s.summary())
}

func (s *Store) summary() Summary {
	sum := Summary{From: s.today.AddDate(0, 0, -historyDays), RevenueByRegion: map[string]int64{}}
	customers := make(map[int]struct{}, 32<<10)
	for i := range s.invoices {
		inv := &s.invoices[i]
		if inv.Cancelled {
			sum.Cancelled++
			continue
		}
		sum.Orders++
		sum.Revenue += inv.Total
		sum.RevenueByRegion[inv.Region] += inv.Total
		for _, l := range inv.Lines {
			sum.Scoops += l.Qty
		}
		customers[inv.Customer] = struct{}{}
	}
	sum.Customers = len(customers)
	if sum.Orders > 0 {
		sum.AvgOrder = math.Round(float64(sum.Revenue)/float64(sum.Orders)*100) / 100
	}
	return sum
}

// OutletMetrics are one outlet's figures for the month.
type OutletMetrics struct {
	Outlet      string  `json:"outlet"`
	Region      string  `json:"region"`
	Orders      int     `json:"orders"`
	Revenue     int64   `json:"revenue"`
	AvgOrder    float64 `json:"avg_order"`
	Last7Days   int64   `json:"revenue_last_7_days"`
	Customers   int     `json:"customers"`
	TopItem     string  `json:"top_item"`
	BusiestHour int     `json:"busiest_hour"`
}

// outletAcc accumulates one outlet's metrics over a scan.
type outletAcc struct {
	m         OutletMetrics
	customers map[int]struct{}
	items     map[string]int
	hours     [24]int
}

func newOutletAcc(outlet string) *outletAcc {
	return &outletAcc{
		m:         OutletMetrics{Outlet: outlet, Region: regionOf[outlet]},
		customers: map[int]struct{}{},
		items:     map[string]int{},
	}
}

func (a *outletAcc) add(inv *Invoice, weekAgo time.Time) {
	a.m.Orders++
	a.m.Revenue += inv.Total
	if !inv.At.Before(weekAgo) {
		a.m.Last7Days += inv.Total
	}
	a.customers[inv.Customer] = struct{}{}
	for _, l := range inv.Lines {
		a.items[l.Item] += l.Qty
	}
	a.hours[inv.At.Hour()]++
}

func (a *outletAcc) result() OutletMetrics {
	m := a.m
	m.Customers = len(a.customers)
	if m.Orders > 0 {
		m.AvgOrder = math.Round(float64(m.Revenue)/float64(m.Orders)*100) / 100
	}
	best := 0
	for item, n := range a.items {
		if n > best || n == best && item < m.TopItem {
			m.TopItem, best = item, n
		}
	}
	for h, n := range a.hours {
		if n > a.hours[m.BusiestHour] {
			m.BusiestHour = h
		}
	}
	return m
}

// OutletMetrics computes one outlet's metrics; false for an unknown outlet.
func (s *Store) OutletMetrics(outlet string) (OutletMetrics, bool) {
	if _, ok := regionOf[outlet]; !ok {
		return OutletMetrics{}, false
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	acc, weekAgo := newOutletAcc(outlet), s.weekAgo()
	for i := range s.invoices {
		if inv := &s.invoices[i]; inv.Outlet == outlet && !inv.Cancelled {
			acc.add(inv, weekAgo)
		}
	}
	return acc.result(), true
}

// weekAgo is where "the last seven days" start: the seven days before
// today, by the generated history's calendar and not the clock, so that
// the figures are the same whenever the program runs.
func (s *Store) weekAgo() time.Time { return s.today.AddDate(0, 0, -7) }

// AllOutletMetrics computes every outlet's metrics in one scan.
func (s *Store) AllOutletMetrics() map[string]OutletMetrics {
	s.mu.RLock()
	defer s.mu.RUnlock()
	accs := make(map[string]*outletAcc, len(regionOf))
	for o := range regionOf {
		accs[o] = newOutletAcc(o)
	}
	weekAgo := s.weekAgo()
	for i := range s.invoices {
		if inv := &s.invoices[i]; !inv.Cancelled {
			accs[inv.Outlet].add(inv, weekAgo)
		}
	}
	out := make(map[string]OutletMetrics, len(accs))
	for o, a := range accs {
		out[o] = a.result()
	}
	return out
}

// TrendingItem is a flavour and what it sold in the last seven days.
type TrendingItem struct {
	Item    string `json:"item"`
	Scoops  int    `json:"scoops"`
	Revenue int64  `json:"revenue"`
}

// Trending returns the ten flavours that sold the most scoops in the last
// seven days.
func (s *Store) Trending() []TrendingItem {
	s.mu.RLock()
	defer s.mu.RUnlock()
	weekAgo := s.weekAgo()
	byItem := map[string]*TrendingItem{}
	for i := range s.invoices {
		inv := &s.invoices[i]
		if inv.Cancelled || inv.At.Before(weekAgo) {
			continue
		}
		for _, l := range inv.Lines {
			t := byItem[l.Item]
			if t == nil {
				t = &TrendingItem{Item: l.Item}
				byItem[l.Item] = t
			}
			t.Scoops += l.Qty
			t.Revenue += l.Amount
		}
	}
	out := make([]TrendingItem, 0, len(byItem))
	for _, t := range byItem {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b TrendingItem) int {
		return cmp.Or(cmp.Compare(b.Scoops, a.Scoops), cmp.Compare(a.Item, b.Item))
	})
	return out[:min(10, len(out))]
}

// LiveOrders counts today's orders: the ones submitted since midnight and
// not cancelled. Before the first one of the day it is 0, a real value.
func (s *Store) LiveOrders() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	midnight := startOfDay(time.Now())
	n := 0
	for i := len(s.invoices) - 1; i >= 0 && !s.invoices[i].At.Before(midnight); i-- {
		if !s.invoices[i].Cancelled {
			n++
		}
	}
	return n
}

// LeaderboardQuery is the argument of the memoized leaderboard: a region
// ("" for all of them) and how many rows.
type LeaderboardQuery struct {
	Region string `json:"region"`
	Limit  int    `json:"limit"`
}

// Row is one outlet on the leaderboard.
type Row struct {
	Rank    int    `json:"rank"`
	Outlet  string `json:"outlet"`
	Region  string `json:"region"`
	Orders  int    `json:"orders"`
	Revenue int64  `json:"revenue"`
}

// Leaderboard ranks the outlets of q.Region by the month's revenue.
func (s *Store) Leaderboard(q LeaderboardQuery) []Row {
	s.mu.RLock()
	defer s.mu.RUnlock()
	byOutlet := map[string]*Row{}
	for i := range s.invoices {
		inv := &s.invoices[i]
		if inv.Cancelled || q.Region != "" && inv.Region != q.Region {
			continue
		}
		r := byOutlet[inv.Outlet]
		if r == nil {
			r = &Row{Outlet: inv.Outlet, Region: inv.Region}
			byOutlet[inv.Outlet] = r
		}
		r.Orders++
		r.Revenue += inv.Total
	}
	rows := make([]Row, 0, len(byOutlet))
	for _, r := range byOutlet {
		rows = append(rows, *r)
	}
	slices.SortFunc(rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(b.Revenue, a.Revenue), cmp.Compare(a.Outlet, b.Outlet))
	})
	rows = rows[:min(q.Limit, len(rows))]
	for i := range rows {
		rows[i].Rank = i + 1
	}
	return rows
}

func startOfDay(t time.Time) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, t.Location())
}
