package ratelimit_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/testutil"
)

func planFile(t *testing.T, rate string) *plan.File {
	t.Helper()
	f, err := plan.Parse("p.yaml", []byte("name: p\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n"+rate))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestPlanPaced: planning 2,000 CVMs (20 list pages, 2,000 reads) against
// an API limit of 50 req/s: with the rate in the file, no 429 and within
// 10% of 2,020/50 s; with no rate in the file, at most 5% answered 429.
func TestPlanPaced(t *testing.T) {
	for _, c := range []struct {
		name, rate string
	}{{"known", "rate: {per_second: 50}\n"}, {"unknown", ""}} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := testutil.InBubble(t, sim.FleetOptions{CVMs: 2000, Seed: 1, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
				b.Sim.SetFaults(sim.Faults{RateLimit: 50, RateBurst: 50, Latency: 10 * time.Millisecond})
				f := planFile(t, c.rate)
				start := time.Now()
				p, err := plan.BuildWith(context.Background(), b.API, f, plan.Options{Pace: (*ratelimit.Limiter)(nil).PlanPacer(f.ID(), f)})
				if err != nil {
					t.Fatal(err)
				}
				took, st := time.Since(start), b.Sim.Stats()
				if p.Counts[plan.Patch] != 2000 {
					t.Fatalf("plan %v", p.Counts)
				}
				share := float64(st.Throttled) / float64(st.Requests)
				t.Logf("%s: %s for %d requests, %d answered 429 (%.1f%%)", c.name, took, st.Requests, st.Throttled, 100*share)
				if c.rate != "" {
					if st.Throttled != 0 || took > 2020/50*1100*time.Millisecond || took < 2020/50*900*time.Millisecond {
						t.Fatalf("known rate: %s, %d answered 429; want none, 40.4 s ±10%%", took, st.Throttled)
					}
				} else if share > 0.05 {
					t.Fatalf("unknown rate: %.1f%% answered 429, want <= 5%%", 100*share)
				}
			})
		})
	}
}

// TestPlanSharesTheWorkersBudget: a plan made through the rollout's shared
// limiter while workers take tokens of the same rollout: together they
// stay at the file's rate.
func TestPlanSharesTheWorkersBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 500, Seed: 1, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
		f := planFile(t, "rate: {per_second: 40}\n")
		l := ratelimit.New(b.RDB)
		ctx, cancel := context.WithCancel(context.Background())
		var workers atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for ctx.Err() == nil {
					if wait, err := l.Take(ctx, f.ID(), ratelimit.FileLimits(f.Rate)); err == nil && wait == 0 {
						workers.Add(1)
					}
				}
			})
		}
		start := time.Now()
		if _, err := plan.BuildWith(context.Background(), b.API, f, plan.Options{Pace: l.PlanPacer(f.ID(), f)}); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		cancel()
		wg.Wait()
		all := float64(workers.Load()+b.Sim.Stats().Requests) / took.Seconds()
		t.Logf("plan took %s; workers and plan together %.1f req/s", took, all)
		if all > 40*1.05 || all < 40*0.9 {
			t.Fatalf("workers and plan together %.1f req/s, want the file's 40", all)
		}
	})
}
