package cache

import (
	"context"
	"fmt"
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
// counted in Stats.
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
	for _, r := range rules {
		targets = append(targets, r(ctx, payload)...)
	}
	if len(targets) == 0 {
		return nil
	}
	if err := m.Invalidate(ctx, targets...); err != nil {
		return fmt.Errorf("cache: event %q: %w", name, err)
	}
	return nil
}
