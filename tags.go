package cache

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/stockpot-go/cache/internal/scripts"
)

// Tags.
//
// A tag is a sorted set, prefix:{t:tag}, whose members name the entries
// carrying the tag and whose scores are when those entries expire. A load
// records its tags before it takes its lease, so an invalidation of the tag
// finds it and voids its store. Recording a member removes the members
// whose entries have expired, and the set expires with its longest-lived
// member: the bookkeeping of a tag never outgrows its live entries.

// Tags tags the entries a call stores, so that Invalidate(ctx, Tag(t))
// removes them. For a Memo, every entry gets the tags (see TagsFor for
// tags that depend on the argument); for a Hash, every field.
func Tags(tags ...string) Option {
	return func(s *settings) {
		for _, t := range tags {
			if t == "" {
				s.fail(fmt.Errorf("%w: empty tag", ErrInvalidKey))
				return
			}
		}
		s.tags = append(s.tags[:len(s.tags):len(s.tags)], tags...)
	}
}

// TagsFor tags each entry of a Memo with the tags f gives for its argument,
// known before its load starts. Given to anything but a Memo[A, R], it is
// an invalid option.
func TagsFor[A any](f func(A) []string) Option {
	return func(s *settings) {
		if f == nil {
			s.fail(fmt.Errorf("%w: nil TagsFor function", ErrInvalidOption))
			return
		}
		s.tagsFor = f
	}
}

// tagEntry records in each tag's set that refs carry it until ttl from now
// (0 for no expiry), in one round trip.
func (m *Manager) tagEntry(ctx context.Context, st *counters, tags []string, ttl time.Duration, refs ...entryRef) error {
	if len(tags) == 0 || len(refs) == 0 {
		return nil
	}
	now := m.now()
	until := "inf"
	if ttl > 0 {
		until = strconv.FormatInt(now.Add(ttl).UnixMilli(), 10)
	}
	_, err := m.pipe(ctx, st, func(p redis.Pipeliner) {
		for _, ref := range refs {
			member := tagMember(ref.withLease())
			for _, t := range tags {
				p.Eval(ctx, scripts.TagAdd.Src, []string{m.tagKey(t)}, now.UnixMilli(), until, member)
			}
		}
	})
	return err
}

// resolveTags turns p.tags into entries. Each tag's set is first renamed
// away (atomically, on its slot), so that an entry tagged meanwhile lands in
// a new set instead of being lost.
func (m *Manager) resolveTags(ctx context.Context, p *invalidation) error {
	if len(p.tags) == 0 {
		return nil
	}
	suffix := newGen()
	renames := make([]*redis.StatusCmd, len(p.tags))
	_, err := m.pipe(ctx, m.kv, func(pipe redis.Pipeliner) {
		for i, t := range p.tags {
			renames[i] = pipe.Rename(ctx, t, takenTagKey(t, suffix))
		}
	})
	if err != nil {
		return fmt.Errorf("cache: invalidate tags: %w", err)
	}
	var taken []string
	for i, r := range renames {
		if r.Err() == nil {
			taken = append(taken, takenTagKey(p.tags[i], suffix))
		}
	}
	const batch = 5000
	for start := int64(0); len(taken) > 0; start += batch {
		cmds := make([]*redis.StringSliceCmd, len(taken))
		_, err := m.pipe(ctx, m.kv, func(pipe redis.Pipeliner) {
			for i, k := range taken {
				cmds[i] = pipe.ZRange(ctx, k, start, start+batch-1)
			}
		})
		if err != nil {
			return fmt.Errorf("cache: invalidate tags: %w", err)
		}
		var more []string
		for i, c := range cmds {
			members := c.Val()
			for _, s := range members {
				ref, ok := parseTagMember(s)
				if !ok {
					continue
				}
				if ref.field != "" {
					p.fields = append(p.fields, ref)
				} else {
					p.strings = append(p.strings, ref)
				}
			}
			if len(members) == batch {
				more = append(more, taken[i])
			} else {
				p.unlink = append(p.unlink, taken[i])
			}
		}
		taken = more
	}
	return nil
}
