package tasks_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestFaultTolerance runs a rollout against each fault the simulator can
// inject. In every case every CVM ends in exactly one terminal state, none
// is patched more often than its attempts allow, and (for faults a retry
// policy should ride out) none fails.
func TestFaultTolerance(t *testing.T) {
	const file = "name: f\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n" +
		"retry: {attempt_timeout: 5s, deadline: 1m}\n"
	cases := []struct {
		name      string
		faults    sim.Faults
		extra     string
		outageFor time.Duration // the API answers 503 to everything for this long, then recovers
		mayFail   bool
	}{
		// The three random faults below must fail no CVM, yet a CVM fails by
		// chance when all 8 of its tries hit the fault. 29 of the 40 CVMs
		// are patched. A try fails with odds q = r + r^5 for 5xx and drops
		// (one PATCH, the GET retried 5 times) and 1-(1-r)^2 for hangs (a
		// hung GET uses up the try's attempt_timeout), so a run fails with
		// odds 29*q^8: at the former 0.3, 0.2 and 0.1, 1 in 500, 13,000 and
		// 20,000. The 5xx case also needs one 5xx among its at least 58
		// requests, (1-r)^58, so 0.17 balances both at 1 in 25,000 a run;
		// drops at 0.15 fail 1 in 134,000 and hangs at 0.08 1 in 110,000.
		{name: "5xx ratio", faults: sim.Faults{ErrorRate: 0.17}},
		{name: "429 bursts", faults: sim.Faults{RateLimit: 5, RateBurst: 10}},
		{name: "latency spikes", faults: sim.Faults{Latency: 100 * time.Millisecond, LatencySpike: 0.2}},
		{name: "dropped connections", faults: sim.Faults{DropRate: 0.15}},
		{name: "hung requests", faults: sim.Faults{HangRate: 0.08}},
		{name: "API down for a minute", outageFor: time.Minute},
		{name: "adaptive under an unknown limit", faults: sim.Faults{RateLimit: 8, RateBurst: 2}, extra: "rate: {per_second: 100}\n"},
		// Its 5xx share is high enough that about 50 requests past the other
		// faults all miss it with odds of 1 in 70,000 (at 0.1 it was 1 in 200).
		{name: "all at once", faults: sim.Faults{ErrorRate: 0.2, DropRate: 0.05, HangRate: 0.05, RateLimit: 20, Latency: 50 * time.Millisecond, LatencySpike: 0.05}, mayFail: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := testutil.InBubble(t, sim.FleetOptions{CVMs: 40, Seed: 21})
				p := b.Apply(t, file+c.extra)
				if c.outageFor > 0 {
					b.Sim.SetFaults(sim.Faults{Down: true})
					time.AfterFunc(c.outageFor, func() { b.Sim.SetFaults(sim.Faults{}) })
				} else {
					b.Sim.SetFaults(c.faults)
				}
				b.Workers(t, 2, 8)
				r := b.WaitState(t, p.ID, 2*time.Hour, store.RolloutCompleted)
				stats := b.Sim.Stats()
				for id, rec := range b.Records(t, p.ID) {
					if !rec.State.Terminal() {
						t.Errorf("%s ended %s", id, rec.State)
					}
					if n := stats.PatchesPerCVM[id]; n > 8 {
						t.Errorf("%s patched %d times (max_attempts 8)", id, n)
					}
					if rec.State == store.Failed && !c.mayFail {
						t.Errorf("%s failed: %s", id, rec.Reason)
					}
				}
				if c.outageFor > 0 && stats.ServerErrors == 0 || c.faults.RateLimit > 0 && stats.Throttled == 0 ||
					c.faults.ErrorRate > 0 && stats.ServerErrors == 0 {
					t.Errorf("the fault was not exercised: %+v", stats)
				}
				if r.Counts[store.Succeeded] == 0 {
					t.Fatalf("nothing succeeded: %v", r.Counts)
				}
			})
		})
	}
}
