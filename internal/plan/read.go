package plan

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/api"
)

// DefaultReadTimeout is how long a plan waits for a usable answer from the
// API (plan and apply --read-timeout).
const DefaultReadTimeout = 2 * time.Minute

// readBackoff paces retries of a read the API failed without a Retry-After.
var readBackoff = Backoff{Base: time.Second, Max: 20 * time.Second}

// GaveUpError is a read the plan stopped retrying: the API gave no usable
// answer (only 429s, 5xx, network errors or timeouts) for the read timeout.
type GaveUpError struct {
	After time.Duration
	Last  error // the last answer or network error; nil if no call was made
}

func (e *GaveUpError) Error() string {
	s := fmt.Sprintf("no usable answer from the API for %s (read timeout)", e.After)
	if e.Last != nil {
		s += ": " + e.Last.Error()
	}
	return s
}

func (e *GaveUpError) Unwrap() error { return e.Last }

var errStalled = errors.New("stalled")

// patience runs a plan's reads. A read is retried while it is throttled
// (429) or fails transiently (5xx, network, timeout), honouring
// Retry-After. It is given up on when its own non-429 failures have gone
// on for the timeout, or when no read of the plan got a usable answer for
// the timeout (a watchdog then cancels every read): an API that throttles
// but answers slows the plan down without changing it, and one that never
// answers ends it within the timeout.
type patience struct {
	timeout time.Duration
	parent  context.Context
	ctx     context.Context // cancelled with errStalled by the watchdog
	cancel  context.CancelCauseFunc
	done    chan struct{}

	mu   sync.Mutex
	last time.Time // the latest usable answer (or the start)
}

func newPatience(ctx context.Context, timeout time.Duration) *patience {
	if timeout <= 0 {
		timeout = DefaultReadTimeout
	}
	p := &patience{timeout: timeout, parent: ctx, done: make(chan struct{}), last: time.Now()}
	p.ctx, p.cancel = context.WithCancelCause(ctx)
	go p.watch()
	return p
}

func (p *patience) watch() {
	defer close(p.done)
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			p.mu.Lock()
			idle := time.Since(p.last)
			p.mu.Unlock()
			if idle >= p.timeout {
				p.cancel(errStalled)
				return
			}
			t.Reset(p.timeout - idle)
		}
	}
}

// stop ends the watchdog; call it once every read has returned.
func (p *patience) stop() {
	p.cancel(context.Canceled)
	<-p.done
}

func (p *patience) answered() {
	p.mu.Lock()
	p.last = time.Now()
	p.mu.Unlock()
}

// read calls fn until the API answers it: fn's error is then nil or not
// transient (a 404, say). Otherwise read returns a *GaveUpError, or the
// parent context's error if that ended.
func (p *patience) read(fn func(context.Context) error) error {
	var last error
	var failingSince time.Time // first non-429 failure
	for attempt := 1; ; attempt++ {
		if p.ctx.Err() != nil {
			return p.gaveUp(last)
		}
		err := fn(p.ctx)
		if err == nil || (p.ctx.Err() == nil && !api.Transient(err)) {
			p.answered()
			return err
		}
		if p.ctx.Err() != nil {
			if last == nil { // the first call is the one cut short
				last = err
			}
			return p.gaveUp(last)
		}
		last = err
		var wait time.Duration
		var ae *api.Error
		if errors.As(err, &ae) && ae.RetryAfter > 0 {
			wait = api.RetryAfterWait(ae.RetryAfter)
		} else {
			wait = readBackoff.Delay(attempt)
		}
		if api.StatusOf(err) != http.StatusTooManyRequests {
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if left := p.timeout - time.Since(failingSince); left <= 0 {
				return p.gaveUp(last)
			} else {
				wait = min(wait, left)
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-p.ctx.Done():
			t.Stop()
			return p.gaveUp(last)
		case <-t.C:
		}
	}
}

func (p *patience) gaveUp(last error) error {
	if err := p.parent.Err(); err != nil {
		return err
	}
	return &GaveUpError{After: p.timeout, Last: last}
}
