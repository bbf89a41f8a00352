package dashboard

import (
	"sync"
	"time"
)

// cache holds one snapshot per page (the rollouts list, one rollout, one
// CVM-table query, the queue), refreshed at most once per tick whatever
// the number of viewers: the first request after a tick reads Redis, the
// others wait for it and share its answer. Entries nobody asked for in a
// while are dropped.
type cache struct {
	tick time.Duration
	now  func() time.Time

	mu      sync.Mutex
	entries map[string]*entry
	swept   time.Time
}

type entry struct {
	mu   sync.Mutex // held while loading: the other viewers wait for its answer
	at   time.Time  // when val was read; zero: never
	used time.Time
	val  []byte
	err  error
}

// idleAfter is how long an entry nobody reads is kept.
const idleAfter = time.Minute

func newCache(tick time.Duration, now func() time.Time) *cache {
	return &cache{tick: tick, now: now, entries: map[string]*entry{}}
}

// get returns key's snapshot, calling load for a new one when the one held
// is a tick old or more.
func (c *cache) get(key string, load func() ([]byte, error)) ([]byte, error) {
	now := c.now()
	c.mu.Lock()
	if now.Sub(c.swept) > idleAfter {
		for k, e := range c.entries {
			if now.Sub(e.used) > idleAfter {
				delete(c.entries, k)
			}
		}
		c.swept = now
	}
	e := c.entries[key]
	if e == nil {
		e = &entry{}
		c.entries[key] = e
	}
	e.used = now
	c.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.at.IsZero() || c.now().Sub(e.at) >= c.tick {
		e.val, e.err = load()
		e.at = c.now()
	}
	return e.val, e.err
}
