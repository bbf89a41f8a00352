package tasks

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// Outcome is what one try of one CVM came to: the terminal state the try
// found (Err nil: succeeded, unchanged, skipped, or failed without asking
// the API again), or the error it ended on.
type Outcome struct {
	State  store.CVMState
	Reason string
	Fields []string // record fields that go with State
	Err    error
	drop   bool // nothing to record: the record is gone, finished, or cancelled
}

// Next is what happens to the CVM after a try.
type Next struct {
	Mode   store.Mode     // ModeFinish, ModeRequeue (an attempt used) or ModeSnooze (not an attempt)
	State  store.CVMState // after the move: terminal for a finish, else pending
	Reason string
	HTTP   int           // the API's status, 0 for none
	Wait   time.Duration // before the next try (requeue, snooze)
	Fields []string
	// For the logs: the API's request_id (when it answered with one) and
	// the try this was (1-based).
	RequestID string
	Attempt   int
}

// Decide is the one place that maps the outcome of try number attempt
// (1-based, counting the tries before it) to what happens next; README's
// "What each API answer leads to" is its table, and TestDecide mirrors it:
//
//	a state the try found      finish with it
//	Done (see Classify)        finish failed or skipped, never retried
//	Throttle                   snooze: wait, back to pending, no attempt used
//	Retry, attempts left       requeue: back to pending after the backoff
//	                           (or Retry-After), an attempt used
//	Retry, the last attempt    finish failed "... (after N attempts)"
func Decide(o Outcome, attempt int, rp plan.Retry) Next {
	if o.Err == nil {
		return Next{Mode: store.ModeFinish, State: o.State, Reason: o.Reason, Fields: o.Fields, Attempt: attempt}
	}
	d := Classify(o.Err)
	n := Next{Reason: d.Reason, HTTP: d.HTTP, State: store.Pending, RequestID: d.RequestID, Attempt: attempt}
	switch {
	case d.Kind == Done:
		n.Mode, n.State = store.ModeFinish, d.State
	case d.Kind == Throttle:
		n.Mode, n.Wait = store.ModeSnooze, d.After
	case attempt >= rp.MaxAttempts:
		n.Mode, n.State, n.Reason = store.ModeFinish, store.Failed, fmt.Sprintf("%s (after %d attempts)", d.Reason, attempt)
	default:
		n.Mode, n.Wait = store.ModeRequeue, retryWait(d, attempt, rp.Backoff)
	}
	return n
}

// retryWait is the wait before the try after failed attempt number
// attempt (1-based): the API's Retry-After, else the file's backoff. It is
// decided here, from the attempts in the CVM's record, because asynq's own
// retry count starts at 0 and also counts snoozes (throttles, pauses).
func retryWait(d Decision, attempt int, b plan.Backoff) time.Duration {
	if d.After > 0 {
		return d.After
	}
	return b.Delay(attempt)
}

// Kind is what the queue does after an attempt.
type Kind int

const (
	Done     Kind = iota // terminal: record State
	Retry                // a failed attempt; retry with backoff while attempts remain
	Throttle             // the API asked us to slow down; wait, not a failed attempt
)

// Decision is the outcome of one API error for the queue.
type Decision struct {
	Kind   Kind
	State  store.CVMState // for Done: failed or skipped
	Reason string         // what the report shows
	After  time.Duration  // for Throttle (and a Retry that carries Retry-After)
	HTTP   int
	// RequestID is the API's id of the answer, for the logs.
	RequestID string
}

// Classify maps an API error from the GET or PATCH of one CVM to what the
// queue does. It is the only place that decides this:
//
//	400 naming the VMM        skipped (VMM too old), never retried
//	400, 403, 404, 422        failed, never retried (the answer will not change)
//	401                       failed, never retried (the key is wrong)
//	429                       throttled: wait Retry-After (default 1s), not an attempt
//	409, 5xx, network, timeout retry with backoff (honouring a Retry-After)
func Classify(err error) Decision {
	var ae *api.Error
	if errors.As(err, &ae) {
		d := Decision{HTTP: ae.StatusCode, Reason: ae.Error(), RequestID: textsafe.Cut(ae.RequestID, maxRequestID)}
		switch s := ae.StatusCode; {
		case s == http.StatusTooManyRequests:
			d.Kind, d.After = Throttle, ae.RetryAfter
			if d.After <= 0 {
				d.After = time.Second
			}
		case s == http.StatusBadRequest && strings.Contains(strings.ToLower(ae.Message), "vmm"):
			d.Kind, d.State = Done, store.Skipped
		case s == http.StatusConflict, s >= 500:
			d.Kind, d.After = Retry, ae.RetryAfter
		default: // 400, 401, 403, 404, 422 and any other 4xx
			d.Kind, d.State = Done, store.Failed
		}
		return d
	}
	var sn *Snooze
	if errors.As(err, &sn) { // the rollout's own rate limit: wait, not an attempt
		return Decision{Kind: Throttle, After: sn.After, Reason: sn.Reason}
	}
	if errors.Is(err, context.Canceled) {
		// The worker is shutting down: not the CVM's fault.
		return Decision{Kind: Throttle, After: time.Second, Reason: "worker shutting down"}
	}
	return Decision{Kind: Retry, Reason: err.Error()}
}

// maxRequestID bounds the request_id a log line carries (the server sent it).
const maxRequestID = 100

// Snooze is returned to asynq to re-run a task later without counting a
// failed attempt (rollout paused, outside a window, throttled).
type Snooze struct {
	After  time.Duration
	Reason string
}

func (s *Snooze) Error() string { return fmt.Sprintf("snoozed %s: %s", s.After, s.Reason) }

// IsFailure tells asynq whether err counts against a task's retries.
func IsFailure(err error) bool {
	var s *Snooze
	return !errors.As(err, &s)
}

// RetryDelay is asynq's RetryDelayFunc: a snooze waits what it says; a
// failed attempt waits what the handler decided (retryWait). Any other
// error (Redis unreachable, say) backs off by asynq's count n of earlier
// retries, which starts at 0.
func RetryDelay(n int, err error, backoff func(n int) time.Duration) time.Duration {
	var s *Snooze
	if errors.As(err, &s) {
		return max(s.After, time.Second)
	}
	var ra *retryAfter
	if errors.As(err, &ra) && ra.after > 0 {
		return ra.after
	}
	return backoff(n + 1)
}

// retryAfter carries an API's Retry-After on a counted retry.
type retryAfter struct {
	err   error
	after time.Duration
}

func (r *retryAfter) Error() string { return r.err.Error() }
func (r *retryAfter) Unwrap() error { return r.err }
