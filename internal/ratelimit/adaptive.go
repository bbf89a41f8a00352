package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/store"
)

// The adaptive rate. One rate per rollout, shared by every worker (and the
// planner): its state is in Redis (store.PaceRecord), the rule is Next.
//
// Every answer is counted by class (Class): 429; 503 with Retry-After
// ("busy"); other 5xx and network errors; timeouts; anything else is ok
// (a 404 is an answer, not load). The counts of all workers add up in one
// window per rollout of Window (1s); whoever's answer closes the window
// decides, once per window:
//
//   - Overload is a 429, a 503 with Retry-After, or a share of 5xx and
//     timeouts above its baseline by Margin (20 points) with at least
//     MinErrors (10) of them in the window. The baseline is an EWMA
//     (weight BaselineWeight, 0.1 a window) of that share in every window
//     with MinErrors answers or more: a steady trickle of random 5xx
//     raises the baseline, not an alarm. A steady 10% of 503s therefore
//     never cuts the rate; 40% out of the blue (from 10%) does.
//   - On a 429 or a 503 with Retry-After the API has told its capacity:
//     what it accepted in the window (answers other than those, per
//     second). The rate goes to Backoff (95%) of that (or of what was sent less
//     twice the share refused, if more: a window with few refusals did not
//     measure the capacity), never up, and at most halved (MaxCut) in one
//     window, from what was sent in it: 80→20 req/s takes two windows,
//     and a rate a little above the limit comes down a little, not by a
//     fixed factor. The window right after a cut, still full of requests
//     sent at the old rate (a queue of workers waiting for tokens),
//     changes it no more when the API accepted at least the new rate:
//     each cut restarts the shared bucket, and a chain of small cuts
//     would send a burst into an API already refusing.
//   - On a surge of 5xx/timeouts the API says nothing of its capacity:
//     the rate is cut by the surge (the share above the baseline), at
//     most halved, at least by 10% (MinCut).
//   - On any cut, the rate it came down from (what was sent), times
//     Threshold (0.9), is remembered (TCP's ssthresh); after a 429 or busy
//     503, what the API accepted: the limit found.
//   - With no known rate (a planner told no rate.per_second) the ceiling
//     is infinite: nothing is paced until the first overload, which cuts
//     to what the API accepted.
//   - A window with answers and no overload raises the rate: by FastStep
//     (10%) while below ssthresh, no higher than it (slow start back to
//     where it hurt); then by SlowStep (1%) a window while within
//     ProbeBand (20%) above ssthresh, however long it has been clean: the
//     limit is in there (what the workers send lags the rate), and each probe
//     that finds it costs a few windows of refusals, so it is found gently
//     and rarely (about every 20 s at an unknown 40 req/s); beyond the
//     band (the limit has risen) by SlowStep doubled every ProbeEvery (5)
//     clean windows in a row, up to FastStep: 20→80 is back within 10% in
//     about 30 windows.
//     It never goes above the file's rate (the ceiling) nor below Floor.
//   - A window with no answers changes nothing.
//
// The rate, the reason of its last change and when are what `status` and
// the metrics show.
const (
	Window         = time.Second
	MinErrors      = 10
	Margin         = 0.20
	BaselineWeight = 0.1
	MaxCut         = 0.5
	MinCut         = 0.9
	Backoff        = 0.95
	FastStep       = 0.10
	SlowStep       = 0.01
	Threshold      = 0.9
	ProbeBand      = 0.20
	ProbeEvery     = 5
)

// Class is how the API answered one request, for adaptive mode.
type Class int

const (
	OK        Class = iota // any answer that is not one of those below
	Throttled              // 429
	Busy                   // 503 with Retry-After
	Failed                 // another 5xx, or a network error
	TimedOut               // no answer in time
	Ignored                // the caller gave up (context cancelled): says nothing of the API
)

// ClassOf classes the error of one API call (nil: a 2xx).
func ClassOf(err error) Class {
	if err == nil {
		return OK
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		return classOfStatus(ae.StatusCode, ae.RetryAfter > 0)
	}
	return classOfErr(err)
}

func classOfStatus(code int, retryAfter bool) Class {
	switch {
	case code == http.StatusTooManyRequests:
		return Throttled
	case code == http.StatusServiceUnavailable && retryAfter:
		return Busy
	case code >= 500:
		return Failed
	}
	return OK
}

func classOfErr(err error) Class {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return Ignored
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return TimedOut
	}
	return Failed
}

func (c Class) add(p *store.PaceCounts) {
	switch c {
	case OK:
		p.OK++
	case Throttled:
		p.Throttled++
	case Busy:
		p.Busy++
	case Failed:
		p.Errors++
	case TimedOut:
		p.Timeouts++
	}
}

// Next is the adaptive rule (see above): the state after a window of
// answers c that began at started and closed at now, for a rollout whose file allows ceiling
// req/s, never going below floor. s.Rate 0 is "not set yet": the ceiling.
func Next(s store.PaceRecord, c store.PaceCounts, started, now time.Time, ceiling, floor float64) store.PaceRecord {
	if s.Rate <= 0 || s.Rate > ceiling {
		s.Rate = ceiling
	}
	if s.Ssthresh <= 0 {
		s.Ssthresh = ceiling
	}
	all := c.OK + c.Throttled + c.Busy + c.Errors + c.Timeouts
	if all == 0 {
		return s
	}
	answered := c.OK + c.Errors + c.Timeouts
	bad := c.Errors + c.Timeouts
	// The rate a cut starts from: what was sent, if less than the rate
	// (fewer requests to send, or no rate yet: an unknown limit).
	sec := math.Max(now.Sub(started).Seconds(), Window.Seconds())
	from := math.Min(s.Rate, float64(all)/sec)
	cut := s.Rate // the rate after a cut
	ssthresh := from * Threshold
	var why string
	switch {
	case c.Throttled+c.Busy > 0:
		accepted := float64(answered) / sec
		// What was accepted is the API's capacity only in a window that
		// pushed against it: one with few refusals (a stall on our side,
		// answers counted late) cuts by twice their share, no more.
		share := float64(c.Throttled+c.Busy) / float64(all)
		cut = math.Max(from*MaxCut, math.Min(s.Rate, Backoff*math.Max(accepted, from*(1-2*share))))
		if s.Clean == 0 && strings.HasPrefix(s.Reason, "cut: ") && accepted >= s.Rate {
			// The window after a cut, with the API accepting more than
			// the rate already is: its 429s are the old rate's, and each
			// cut restarts the bucket (a burst): held.
			cut = s.Rate
		}
		ssthresh = accepted
		why = fmt.Sprintf("429 Too Many Requests: %d of %d answers", c.Throttled, all)
		if c.Throttled == 0 {
			why = fmt.Sprintf("503 with Retry-After: %d of %d answers", c.Busy, all)
		}
	case bad >= MinErrors && float64(bad)/float64(answered) > s.Baseline+Margin:
		share := float64(bad)/float64(answered) - s.Baseline
		cut = from * math.Min(MinCut, math.Max(MaxCut, 1-share))
		why = fmt.Sprintf("5xx/timeouts: %d of %d answers (%.0f%%, baseline %.0f%%)", bad, answered,
			100*float64(bad)/float64(answered), 100*s.Baseline)
	}
	if answered >= MinErrors {
		s.Baseline += BaselineWeight * (float64(bad)/float64(answered) - s.Baseline)
	}
	if why != "" {
		if cut < s.Rate {
			s.Ssthresh = ssthresh
		}
		s.Rate = math.Max(floor, cut)
		s.Clean, s.Reason, s.ChangedAt = 0, "cut: "+why, now
		return s
	}
	s.Clean++
	if s.Rate >= ceiling {
		return s
	}
	step := FastStep
	switch {
	case s.Rate >= s.Ssthresh*(1+ProbeBand):
		step = math.Min(FastStep, SlowStep*math.Pow(2, float64(s.Clean/ProbeEvery)))
	case s.Rate >= s.Ssthresh:
		step = SlowStep
	}
	next := s.Rate + math.Max(0.1, s.Rate*step)
	if s.Rate < s.Ssthresh {
		next = math.Min(next, s.Ssthresh)
	}
	s.Rate = math.Min(ceiling, next)
	// The last cut stays in the reason until the rate is back at the
	// file's: what slowed the rollout is what an operator asks.
	last := ""
	if i := strings.Index(s.Reason, "cut: "); i >= 0 {
		last = ", after " + s.Reason[i:]
	}
	s.Reason, s.ChangedAt = fmt.Sprintf("raised: no overload for %d s%s", s.Clean, last), now
	if s.Rate >= ceiling {
		s.Reason = "back at the file's rate" + last
	}
	return s
}
