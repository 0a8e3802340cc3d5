package cache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/envelope"
	"github.com/stockpot-go/cache/internal/scripts"
)

// Tags.
//
// A tag has a generation: a random number under the key P{t:TAG}:g. An
// entry stored with tags carries in its envelope each tag's name and the
// generation the tag had before the entry's value was loaded (or written,
// by Set). A read serves the entry only while each of those tags still has
// that generation. Invalidate(Tag(t)) deletes t's generation: one command,
// however many entries carry t, and the next load or write that needs it
// makes a new one.
//
// This is fail-safe: a generation lost to eviction, to a restart without
// persistence or to a failover that missed a write never comes back with
// the value an entry carries, so its loss can only turn entries into
// misses. Entries whose tag moved are not deleted: they stay in Redis,
// unread, until their TTL ends. Each tag's generation is kept alive at
// least as long as the entries stored with it: every load or write of one
// extends it.
//
// A read that knows its tags (GetOrLoad with Tags; every read of a Memo or
// Hash made with Tags or TagsFor, Hash.Get and Hash.All included) reads
// their generations with the entry, in the same round trip. A read that
// does not (Get, GetMany, a read of an untagged Hash, or of an entry stored
// with other tags) reads them in a second round trip, when the entry turns
// out to carry tags.

// Tags tags the entries a call stores, so that Invalidate(ctx, Tag(t))
// removes them. For a Memo, every entry gets the tags (see TagsFor for
// tags that depend on the argument); for a Hash, every field.
func Tags(tags ...string) Option {
	return func(s *settings) {
		s.give(optTags)
		for _, t := range tags {
			if t == "" {
				s.fail(fmt.Errorf("%w: empty tag", ErrInvalidKey))
				return
			}
		}
		s.tags = append(s.tags[:len(s.tags):len(s.tags)], tags...)
	}
}

// KeyBy gives a Memo[A, R] the key text of its arguments: f(a) for
// argument a, in place of the canonical encoding Memoize describes. Two
// arguments share an entry exactly when f gives them one text, so f must
// give different texts to arguments whose results differ; use it for an
// argument type the encoding refuses (one holding a func), or to key by
// an ID alone. Long texts are hashed. Given to anything but a Memo[A, R],
// or with f of another argument type, it is an invalid option.
func KeyBy[A any](f func(A) string) Option {
	return func(s *settings) {
		s.give(optKeyBy)
		if f == nil {
			s.fail(fmt.Errorf("%w: nil KeyBy function", ErrInvalidOption))
			return
		}
		s.keyBy = f
	}
}

// TagsFor tags each entry of a Memo with the tags f gives for its argument,
// known before its load starts. Given to anything but a Memo[A, R], it is
// an invalid option.
func TagsFor[A any](f func(A) []string) Option {
	return func(s *settings) {
		s.give(optTagsFor)
		if f == nil {
			s.fail(fmt.Errorf("%w: nil TagsFor function", ErrInvalidOption))
			return
		}
		s.tagsFor = f
	}
}

// tagGens returns the generations of tags, making those that are missing,
// and keeps each alive for at least keep (0: for ever), in one round trip
// (one per node).
func (m *Manager) tagGens(ctx context.Context, st *counters, tags []string, keep time.Duration) ([]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	calls := make([]scriptCall, len(tags))
	for i, t := range tags {
		calls[i] = scriptCall{keys: []string{m.tagKey(t)}, args: []any{newGen(), keep.Milliseconds()}}
	}
	cmds, err := m.evalMany(ctx, st, scripts.TagGen, calls)
	if err != nil {
		return nil, err
	}
	gens := make([]string, len(tags))
	for i, c := range cmds {
		gens[i], _ = c.Val().(string)
	}
	return gens, nil
}

// tagKeep is how long the generations of e's tags must live for an entry
// loaded now: its time in Redis, and a lease's time for the load.
func (m *Manager) tagKeep(e *entry) time.Duration {
	keep := e.s.keep(e.s.ttl)
	if e.s.noExpiry {
		return 0
	}
	return max(keep, m.opts.NegativeTTL) + m.opts.LeaseTTL
}

// readTagGens returns the generations tags have now ("" where one has
// none), in one round trip (one per node).
func (m *Manager) readTagGens(ctx context.Context, st *counters, tags []string) ([]string, error) {
	cmds := make([]*redis.StringCmd, len(tags))
	_, err := m.pipe(ctx, st, func(p redis.Pipeliner) {
		for i, t := range tags {
			cmds[i] = p.Get(ctx, m.tagKey(t))
		}
	})
	if err != nil {
		return nil, err
	}
	gens := make([]string, len(tags))
	for i, c := range cmds {
		gens[i] = c.Val()
	}
	return gens, nil
}

// tagSection returns the envelope's tags section of an entry stored with
// tags under their generations gens; nil for none.
func tagSection(tags, gens []string) []byte {
	var b []byte
	for i, t := range tags {
		g, _ := strconv.ParseUint(gens[i], 10, 64)
		b = envelope.AppendTag(b, t, g)
	}
	return b
}

// tagNames returns the names in an envelope's tags section.
func tagNames(section []byte) []string {
	var names []string
	for len(section) > 0 {
		name, _, rest, ok := envelope.NextTag(section)
		if !ok {
			break
		}
		names = append(names, string(name))
		section = rest
	}
	return names
}

// tagVerdict is what an entry's tags say about it.
type tagVerdict uint8

const (
	tagsCurrent tagVerdict = iota // every tag has the generation the entry carries
	tagsMoved                     // a tag's generation moved, or is gone: the entry is invalid
	tagsOther                     // the entry carries other tags than those whose generations are known
)

// checkTags compares the tags section of an entry with tags, whose
// generations are gens now ("" where one has none).
func checkTags(section []byte, tags, gens []string) tagVerdict {
	i := 0
	moved := false
	for len(section) > 0 {
		name, gen, rest, ok := envelope.NextTag(section)
		if !ok || i == len(tags) || string(name) != tags[i] {
			return tagsOther
		}
		if !sameGen(gen, gens[i]) {
			moved = true
		}
		section = rest
		i++
	}
	switch {
	case i != len(tags):
		return tagsOther
	case moved:
		return tagsMoved
	}
	return tagsCurrent
}

// otherTags returns, for entries found carrying the tags sections
// sections (whose generations were not read with them), what each must
// have been stored under: the generations of all their tags, read in one
// round trip (one per node).
func (m *Manager) otherTags(ctx context.Context, st *counters, sections [][]byte) ([]expect, error) {
	index := make(map[string]int)
	var names []string
	wants := make([]expect, len(sections))
	for i, sec := range sections {
		wants[i].tags = tagNames(sec)
		for _, n := range wants[i].tags {
			if _, ok := index[n]; !ok {
				index[n] = len(names)
				names = append(names, n)
			}
		}
	}
	gens, err := m.readTagGens(ctx, st, names)
	if err != nil {
		return nil, err
	}
	for i := range wants {
		wants[i].gens = make([]string, len(wants[i].tags))
		for j, n := range wants[i].tags {
			wants[i].gens[j] = gens[index[n]]
		}
	}
	return wants, nil
}

// tagSectionNow returns the tags section of an entry written now with
// settings s: its tags, under their generations (made where missing, and
// kept alive as long as the entry). Nil without tags.
func (m *Manager) tagSectionNow(ctx context.Context, st *counters, s *settings) ([]byte, error) {
	if len(s.tags) == 0 {
		return nil, nil
	}
	gens, err := m.tagGens(ctx, st, s.tags, m.tagKeep(&entry{s: s}))
	if err != nil {
		return nil, err
	}
	return tagSection(s.tags, gens), nil
}

// retag returns b, the envelope of v, with the tags section section.
func (m *Manager) retag(v any, b, section []byte) ([]byte, error) {
	h, payload, err := envelope.Decode(b)
	if err != nil {
		return nil, err
	}
	h.Tags = section
	return m.seal(v, h, payload)
}
