package ratelimit_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestRateSharedByWorkers: three "workers" taking tokens for one rollout
// together get the configured rate, within 5%, over 30 s of fake time.
func TestRateSharedByWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, testutil.NoFleet)
		l := ratelimit.New(b.RDB)
		lim := ratelimit.Limits{PerSecond: 20, Burst: 1}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var got atomic.Int64
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				for ctx.Err() == nil {
					if wait, err := l.Take(ctx, "r1", lim); err == nil && wait == 0 {
						got.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if n := got.Load(); n < 570 || n > 630 {
			t.Fatalf("%d requests in 30s at 20/s", n)
		}
	})
}

// TestAdaptiveSharedWindow: answers from several processes add up in one
// window per rollout; a cut is seen by every process; fixed mode ignores
// answers.
func TestAdaptiveSharedWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, testutil.NoFleet)
		a, c := ratelimit.New(b.RDB), ratelimit.New(b.RDB)
		lim := ratelimit.Limits{PerSecond: 100, Adaptive: true}
		ctx := context.Background()
		rate := func(l *ratelimit.Limiter) float64 {
			r, err := l.Rate(ctx, "r", lim)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		if r := rate(a); r != 100 {
			t.Fatalf("start %v", r)
		}
		// Half of 100 req/s answered 429 over one window, from two
		// processes: one cut, to about what the API accepted.
		for i := range 100 {
			l, cl := a, ratelimit.OK
			if i%2 == 1 {
				l, cl = c, ratelimit.Throttled
			}
			if err := l.Observe(ctx, "r", lim, cl); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		a.Observe(ctx, "r", lim, ratelimit.OK) // closes the window
		c.Observe(ctx, "r", lim, ratelimit.OK)
		r, why, at, err := a.PaceState(ctx, "r")
		if err != nil || r < 40 || r > 55 || !strings.HasPrefix(why, "cut: 429 Too Many Requests") || at.IsZero() {
			t.Fatalf("after half 429s: rate %v, %q at %v, %v", r, why, at, err)
		}
		time.Sleep(ratelimit.RateFresh)
		if r2 := rate(c); r2 != r {
			t.Fatalf("the other process sees %v, not %v", r2, r)
		}
		// Fixed mode ignores answers.
		fixed := ratelimit.Limits{PerSecond: 50}
		for range 20 {
			c.Observe(ctx, "f", fixed, ratelimit.Throttled)
			time.Sleep(100 * time.Millisecond)
		}
		if r, _ := c.Rate(ctx, "f", fixed); r != 50 {
			t.Fatalf("fixed rate moved to %v", r)
		}
	})
}

func TestInFlightSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, testutil.NoFleet)
		l := ratelimit.New(b.RDB)
		lim := ratelimit.Limits{MaxInFlight: 3}
		ctx := context.Background()
		var cur, peak, done atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range 10 {
			wg.Go(func() {
				for {
					rel, err := l.Slot(ctx, "r", lim, 5*time.Second, time.Minute, "")
					if err != nil {
						t.Error(err)
						return
					}
					if rel == nil {
						continue
					}
					n := cur.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					time.Sleep(100 * time.Millisecond)
					cur.Add(-1)
					rel()
					done.Add(1)
					return
				}
			})
		}
		wg.Wait()
		if peak.Load() != 3 || done.Load() != 10 {
			t.Fatalf("peak %d in flight (max 3), %d done", peak.Load(), done.Load())
		}
		// 10 holders of 100ms, 3 at a time: 4 waves. A release wakes a
		// waiter at once; waiters that only polled would take a second each.
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Fatalf("10 holders took %s at max 3: released slots did not wake the waiters", d)
		}
		// A holder that dies keeps its slot only until its lease ends: one
		// live holder with a long lease, two dead ones with 10s leases.
		if rel, err := l.Slot(ctx, "dead", lim, time.Second, 2*time.Minute, ""); err != nil || rel == nil {
			t.Fatal("no slot", err)
		}
		for range 2 {
			if rel, err := l.Slot(ctx, "dead", lim, time.Second, 10*time.Second, ""); err != nil || rel == nil {
				t.Fatal("no slot", err)
			}
		}
		if rel, _ := l.Slot(ctx, "dead", lim, time.Second, time.Minute, ""); rel != nil {
			t.Fatal("a fourth slot")
		}
		time.Sleep(11 * time.Second)
		if n, err := l.Reap(ctx, "dead"); err != nil || n != 2 {
			t.Fatalf("reaped %d, %v; want the 2 dead holders", n, err)
		}
		for i := range 3 {
			rel, _ := l.Slot(ctx, "dead", lim, time.Second, time.Minute, "")
			if got := rel != nil; got != (i < 2) {
				t.Fatalf("slot %d after the reap: got one = %v (the live holder still has its own)", i+1, got)
			}
		}
	})
}

// TestAdaptiveIdleFlush: the last answers before requests stop (a bake,
// the end of a stage) still reach the shared window, and close it.
func TestAdaptiveIdleFlush(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, testutil.NoFleet)
		l := ratelimit.New(b.RDB)
		lim := ratelimit.Limits{PerSecond: 100, Adaptive: true}
		ctx := context.Background()
		for _, c := range []ratelimit.Class{ratelimit.OK, ratelimit.Throttled, ratelimit.Throttled, ratelimit.OK} {
			if err := l.Observe(ctx, "r", lim, c); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		r, why, _, err := l.PaceState(ctx, "r")
		if err != nil || r <= 0 || r >= 100 || !strings.HasPrefix(why, "cut: 429") {
			t.Fatalf("after 429s and silence: rate %v (%q), %v", r, why, err)
		}
	})
}
