package ratelimit_test

import (
	"context"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"golang.org/x/time/rate"
)

// fakeAPI answers like the simulator, on the bubble's clock: a token
// bucket limit (429 above it), then a share of random 5xx, after a fixed
// latency.
type fakeAPI struct {
	mu       sync.Mutex
	limit    *rate.Limiter // nil: none
	errShare float64
	rng      *rand.Rand
	sent     int64
	refused  int64 // 429
	failed   int64
}

// newFake answers errShare of requests with a 5xx, above limit (0: none)
// with a 429.
func newFake(errShare, limit float64) *fakeAPI {
	f := &fakeAPI{errShare: errShare, rng: rand.New(rand.NewPCG(1, 2))}
	if limit > 0 {
		f.setLimit(limit)
	}
	return f
}

func (f *fakeAPI) setLimit(l float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.limit = rate.NewLimiter(rate.Limit(l), max(1, int(l/4)))
}

func (f *fakeAPI) do() ratelimit.Class {
	time.Sleep(20 * time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent++
	if f.limit != nil && !f.limit.Allow() {
		f.refused++
		return ratelimit.Throttled
	}
	if f.rng.Float64() < f.errShare {
		f.failed++
		return ratelimit.Failed
	}
	return ratelimit.OK
}

// snapshot is sent, refused (429) and accepted (not 429) so far.
func (f *fakeAPI) snapshot() (sent, refused, accepted int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, f.refused, f.sent - f.refused
}

// fleet runs 3 "worker processes" (3 Limiters on one Redis), 16 requests
// at a time each, taking tokens and telling the adaptive rate each answer,
// for one rollout whose file allows ceiling req/s. It returns a stop func.
func fleet(t *testing.T, f *fakeAPI, ceiling float64) (stop func(), state func() (float64, string)) {
	b := testutil.InBubble(t, testutil.NoFleet)
	lim := ratelimit.Limits{PerSecond: ceiling, Adaptive: true}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		l := ratelimit.New(b.RDB)
		for range 16 {
			wg.Go(func() {
				for ctx.Err() == nil {
					wait, err := l.Take(ctx, "r", lim)
					if err != nil {
						return
					}
					if wait > 0 { // a worker would snooze the task
						time.Sleep(wait)
						continue
					}
					_ = l.Observe(ctx, "r", lim, f.do())
				}
			})
		}
	}
	st := store.NewLimits(b.RDB)
	return func() { cancel(); wg.Wait() }, func() (float64, string) {
		r, why, _, err := st.PaceState(context.Background(), "r")
		if err != nil {
			t.Fatal(err)
		}
		return r, why
	}
}

// perSecond measures f over d: sent and accepted per second, and the share
// of requests answered 429.
func perSecond(f *fakeAPI, d time.Duration) (sent, accepted, refusedShare float64) {
	s0, r0, a0 := f.snapshot()
	time.Sleep(d)
	s1, r1, a1 := f.snapshot()
	sec := d.Seconds()
	if s1 > s0 {
		refusedShare = float64(r1-r0) / float64(s1-s0)
	}
	return float64(s1-s0) / sec, float64(a1-a0) / sec, refusedShare
}

// TestAdaptiveIgnoresRandomErrors: 10% random 5xx with no limit is noise,
// not overload: the rate stays at the file's 100 req/s over 60 s.
func TestAdaptiveIgnoresRandomErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(0.10, 0)
		stop, state := fleet(t, f, 100)
		defer stop()
		sent, _, _ := perSecond(f, 60*time.Second)
		r, why := state()
		t.Logf("sent %.1f req/s (rate %.1f: %q)", sent, r, why)
		if sent < 80 {
			t.Fatalf("sent %.1f req/s over 60 s, want >= 80 (rate %.1f: %s)", sent, r, why)
		}
		if r < 95 {
			t.Fatalf("rate %.1f after 60 s of random 5xx (%s)", r, why)
		}
	})
}

// TestAdaptiveSettlesAtUnknownLimit: an API limit of 40 req/s the file
// does not know (it allows 400): the accepted rate settles within 10% of
// 40, with at most 4% answered 429 (the issue asks 5%; this rule refused
// 2.5-3.1% here, the one before the slow probe and the held window after a
// cut 3.5-4.2%; TestNextProbe pins the probe itself window by window).
func TestAdaptiveSettlesAtUnknownLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(0, 40)
		stop, state := fleet(t, f, 400)
		defer stop()
		time.Sleep(20 * time.Second) // settling
		// Over 4 minutes: a probe finds the limit every 20 s or so, and
		// 60 s hold too few of them for a share to be measured.
		_, accepted, refused := perSecond(f, 240*time.Second)
		r, why := state()
		if accepted < 36 || accepted > 44 || refused > 0.04 {
			t.Fatalf("accepted %.1f req/s, %.1f%% answered 429; want 40 ±10%%, <= 4%% (rate %.1f: %s)", accepted, 100*refused, r, why)
		}
		t.Logf("accepted %.1f req/s, %.1f%% answered 429 (rate %.1f: %s)", accepted, 100*refused, r, why)
		if !strings.Contains(why, "429") {
			t.Fatalf("reason %q does not name the 429s", why)
		}
	})
}

// TestAdaptiveFollowsTheLimit: the API's limit drops from 80 to 20 req/s:
// what is sent is within 10% of 20 in under 15 s; it rises to 80 again: the
// accepted rate is within 10% of 80 in under 60 s.
func TestAdaptiveFollowsTheLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(0, 80)
		stop, state := fleet(t, f, 200)
		defer stop()
		time.Sleep(60 * time.Second) // settling: the first climb to an unknown limit creeps near its first threshold
		if _, accepted, _ := perSecond(f, 10*time.Second); accepted < 72 {
			t.Fatalf("at an 80 req/s limit: accepted %.1f req/s", accepted)
		}
		f.setLimit(20)
		settled := within(f, 18, 22, 15*time.Second)
		if settled < 0 {
			r, why := state()
			t.Fatalf("limit 80 -> 20: not within 10%% of 20 req/s in 15 s (rate %.1f: %s)", r, why)
		}
		t.Logf("80 -> 20: within 10%% after %s", time.Duration(settled))
		time.Sleep(20 * time.Second)
		f.setLimit(80)
		settled = within(f, 72, 88, 60*time.Second)
		if settled < 0 {
			r, why := state()
			t.Fatalf("limit 20 -> 80: not within 10%% of 80 req/s in 60 s (rate %.1f: %s)", r, why)
		}
		t.Logf("20 -> 80: within 10%% after %s", time.Duration(settled))
	})
}

// within is how long (from now) until the rate sent over a 3 s window
// and the rate accepted in it are both in [lo, hi], or -1 if not by limit.
func within(f *fakeAPI, lo, hi float64, limit time.Duration) time.Duration {
	start := time.Now()
	type mark struct {
		at     time.Time
		sent   int64
		accept int64
	}
	var marks []mark
	for time.Since(start) <= limit {
		s, _, a := f.snapshot()
		marks = append(marks, mark{time.Now(), s, a})
		if n := len(marks); n > 6 {
			m0, m1 := marks[n-7], marks[n-1]
			sec := m1.at.Sub(m0.at).Seconds()
			sent, acc := float64(m1.sent-m0.sent)/sec, float64(m1.accept-m0.accept)/sec
			if sent >= lo && sent <= hi && acc >= lo {
				return m0.at.Sub(start)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	return -1
}

// TestNext pins the rule on single windows.
func TestNext(t *testing.T) {
	now := time.Unix(1000, 0)
	s := store.PaceRecord{Rate: 100, Ssthresh: 100, Baseline: 0.10}
	for _, c := range []struct {
		name   string
		counts store.PaceCounts
		rate   float64
		reason string
	}{
		{"a steady 10% of 5xx is noise", store.PaceCounts{OK: 90, Errors: 10}, 100, ""},
		{"a surge of 5xx over the baseline is overload", store.PaceCounts{OK: 50, Errors: 40, Timeouts: 10}, 60, "cut: 5xx/timeouts: 50 of 100"},
		{"few errors say nothing", store.PaceCounts{OK: 2, Errors: 8}, 100, ""},
		{"one 429: to what the API accepted, less 5%", store.PaceCounts{OK: 99, Throttled: 1}, 94.05, "cut: 429"},
		{"many 429s: at most halved", store.PaceCounts{OK: 25, Throttled: 75}, 50, "cut: 429"},
		{"429s below what the API accepts: held", store.PaceCounts{OK: 150, Throttled: 5}, 100, "cut: 429"},
		{"a 503 with Retry-After is overload", store.PaceCounts{OK: 90, Busy: 10}, 85.5, "cut: 503 with Retry-After"},
		{"no answers change nothing", store.PaceCounts{}, 100, ""},
	} {
		got := ratelimit.Next(s, c.counts, now.Add(-time.Second), now, 100, 1)
		if got.Rate != c.rate || !strings.HasPrefix(got.Reason, c.reason) {
			t.Errorf("%s: rate %v (%q), want %v (%q...)", c.name, got.Rate, got.Reason, c.rate, c.reason)
		}
		if got.Rate != s.Rate && !got.ChangedAt.Equal(now) {
			t.Errorf("%s: changed at %v", c.name, got.ChangedAt)
		}
	}
	// Recovery: steps that grow while clean,
	// never above the ceiling; the last cut stays in the reason.
	s = ratelimit.Next(store.PaceRecord{Rate: 80}, store.PaceCounts{OK: 40, Throttled: 40}, now.Add(-time.Second), now, 100, 1)
	if s.Rate != 40 || s.Ssthresh != 40 { // what the API accepted, not 0.9 of 80
		t.Fatalf("cut to %v, ssthresh %v", s.Rate, s.Ssthresh)
	}
	for i := 1; s.Rate < 100; i++ {
		prev := s.Rate
		at := now.Add(time.Duration(i) * time.Second)
		s = ratelimit.Next(s, store.PaceCounts{OK: 10}, at.Add(-time.Second), at, 100, 1)
		if s.Rate <= prev || s.Rate > 100 || !strings.Contains(s.Reason, "after cut: 429") {
			t.Fatalf("window %d: %v -> %v (%q)", i, prev, s.Rate, s.Reason)
		}
		if i > 30 {
			t.Fatalf("not back at 100 after 30 clean windows: %v", s.Rate)
		}
	}
}

// TestNextProbe pins how the rate climbs back after a 429 cut and what
// the window right after a cut does: slow start stops at ssthresh; within
// ProbeBand above it the rate creeps by SlowStep however long it has been
// clean (the limit is there); beyond it the step doubles again. The old
// rule doubled by clean windows alone, ran through the limit at 4-10% a
// window, and each probe cost seconds of 429s.
func TestNextProbe(t *testing.T) {
	now := time.Unix(1000, 0)
	clean := store.PaceCounts{OK: 40}
	for _, c := range []struct {
		name string
		s    store.PaceRecord
		rate float64
	}{
		{"slow start below the threshold", store.PaceRecord{Rate: 30, Ssthresh: 40}, 33},
		{"slow start stops at the threshold", store.PaceRecord{Rate: 38, Ssthresh: 40}, 40},
		{"near the found limit: 1% however long clean", store.PaceRecord{Rate: 42, Ssthresh: 40, Clean: 12}, 42.42},
		{"beyond the band: the step doubles again", store.PaceRecord{Rate: 50, Ssthresh: 40, Clean: 12}, 52},
	} {
		got := ratelimit.Next(c.s, clean, now.Add(-time.Second), now, 400, 1)
		if math.Abs(got.Rate-c.rate) > 1e-9 {
			t.Errorf("%s: %v -> %v, want %v", c.name, c.s.Rate, got.Rate, c.rate)
		}
	}
	// The window after a cut: 429s of the old rate while the API accepted
	// more than the new one change nothing (no second cut, no bucket
	// restart); accepting less than it (the limit fell further) cuts.
	after := store.PaceRecord{Rate: 39, Ssthresh: 37.8, Reason: "cut: 429 Too Many Requests: 3 of 45 answers"}
	if got := ratelimit.Next(after, store.PaceCounts{OK: 40, Throttled: 8}, now.Add(-time.Second), now, 400, 1); got.Rate != 39 {
		t.Errorf("after a cut, the API accepting 40: %v -> %v, want held", after.Rate, got.Rate)
	}
	if got := ratelimit.Next(after, store.PaceCounts{OK: 20, Throttled: 20}, now.Add(-time.Second), now, 400, 1); got.Rate != 19.5 {
		t.Errorf("after a cut, the API accepting 20: %v -> %v, want 19.5 (halved)", after.Rate, got.Rate)
	}
}
