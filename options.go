package cache

import (
	"fmt"
	"time"
)

// An Option is a per-call setting, such as TTL(d) or NoExpiry().
type Option func(*settings)

// settings are the Options of one call, or of one Hash or Memo.
type settings struct {
	ttl      time.Duration // 0: Options.DefaultTTL
	noExpiry bool
	jitter   float64 // negative: Options.Jitter
	tags     []string
	staleFor time.Duration // StaleFor
	// noFetchOnMiss is FetchOnMiss(false).
	noFetchOnMiss bool
	earlyBeta     float64 // EarlyRefresh
	tagsFor       any     // a func(A) []string, for a Memo[A, R]
	keyBy         any     // a func(A) string, for a Memo[A, R]
	shards        int     // Shards; 0: one
	// rememberMissing is RememberMissing: a batch loader's left-out keys
	// are remembered as not found.
	rememberMissing bool
	given           optionSet
	err             error // the first invalid option
}

// optionSet is a set of the kinds of Option.
type optionSet uint16

const (
	optTTL optionSet = 1 << iota
	optNoExpiry
	optJitter
	optTags
	optStaleFor
	optFetchOnMiss
	optEarlyRefresh
	optTagsFor
	optRememberMissing
	optKeyBy
	optShards
	numOptions = iota
)

var optionNames = [numOptions]string{"TTL", "NoExpiry", "Jitter", "Tags", "StaleFor", "FetchOnMiss", "EarlyRefresh", "TagsFor", "RememberMissing", "KeyBy", "Shards"}

// The options each kind of call takes.
const (
	writeOptions  = optTTL | optNoExpiry | optJitter | optTags                             // Set, SetMany
	loadedOptions = writeOptions | optStaleFor | optFetchOnMiss | optEarlyRefresh          // GetOrLoad, Refresh
	hashOptions   = loadedOptions | optRememberMissing                                     // NewHash
	memoOptions   = loadedOptions | optTagsFor | optRememberMissing | optKeyBy | optShards // Memoize, MemoizeBatch
)

// give records that an option of kind k was given.
func (s *settings) give(k optionSet) { s.given |= k }

// settle applies opts over the Manager's defaults, for a call that takes
// the options in allowed (named call, for the error of one it does not).
func (m *Manager) settle(call string, allowed optionSet, opts []Option) settings {
	s := settings{jitter: -1}
	for _, o := range opts {
		if o == nil {
			s.fail(fmt.Errorf("%w: nil Option", ErrInvalidOption))
			continue
		}
		o(&s)
	}
	if extra := s.given &^ allowed; extra != 0 {
		for i, name := range optionNames {
			if extra&(1<<i) != 0 {
				s.fail(fmt.Errorf("%w: %s does not apply to %s", ErrInvalidOption, name, call))
				break
			}
		}
	}
	if s.ttl == 0 {
		s.ttl = m.opts.DefaultTTL
	}
	if s.jitter < 0 {
		s.jitter = m.opts.Jitter
	}
	return s
}

func (s *settings) fail(err error) {
	if s.err == nil {
		s.err = err
	}
}
