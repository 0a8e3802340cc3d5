package cache

import (
	"context"
	"errors"
	"runtime/debug"
	"sync"
)

// A Rule maps an application event's payload to the targets it makes
// stale.
type Rule func(ctx context.Context, payload any) []Target

// events holds the rules of each event.
type events struct {
	mu    sync.RWMutex // protects rules
	rules map[string][]Rule
}

// OnEvent adds a rule for the event name: when the application Emits it,
// the targets the rule returns are invalidated. An event may have many
// rules. Rules are called outside the Manager's locks and must not block.
func (m *Manager) OnEvent(name string, rule Rule) {
	if rule == nil {
		return
	}
	m.events.mu.Lock()
	defer m.events.mu.Unlock()
	if m.events.rules == nil {
		m.events.rules = make(map[string][]Rule)
	}
	m.events.rules[name] = append(m.events.rules[name], rule)
}

// Emit applies every rule of the event name to payload and invalidates all
// their targets in one Invalidate. An event with no rules is a no-op,
// counted in Stats. A rule that panics is an error naming the event and the
// rule (by the order it was added in, from 1), a *PanicError; the targets
// of the other rules are invalidated all the same.
func (m *Manager) Emit(ctx context.Context, name string, payload any) error {
	if err := m.check(ctx); err != nil {
		return err
	}
	m.events.mu.RLock()
	rules := m.events.rules[name]
	m.events.mu.RUnlock()
	if len(rules) == 0 {
		m.inv.unknownEvents.Add(1)
		return nil
	}
	m.inv.events.Add(1)
	var targets []Target
	var errs []error
	for i, r := range rules {
		t, err := applyRule(ctx, r, payload)
		if err != nil {
			errs = append(errs, wrap(err, "event %q: rule %d", name, i+1))
		}
		targets = append(targets, t...)
	}
	if len(targets) > 0 {
		if err := m.Invalidate(ctx, targets...); err != nil {
			errs = append(errs, wrap(err, "event %q", name))
		}
	}
	return errors.Join(errs...)
}

// applyRule returns r's targets for payload, turning a panic into a
// *PanicError.
func applyRule(ctx context.Context, r Rule, payload any) (targets []Target, err error) {
	defer func() {
		if v := recover(); v != nil {
			targets, err = nil, &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return r(ctx, payload), nil
}
