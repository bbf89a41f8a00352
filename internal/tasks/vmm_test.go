package tasks_test

import (
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestVMMDowngradedAfterPlan: a host whose VMM went below 0.5.7 after the
// plan gets its CVMs skipped, never failed, by the API's own 400, however
// old the plan is; and the worker spends no read on re-checking the VMM:
// two requests per CVM (the before-image GET and the PATCH), whatever the
// plan's age.
func TestVMMDowngradedAfterPlan(t *testing.T) {
	for _, c := range []struct {
		name string
		wait time.Duration
	}{
		{"aged plan", 3 * time.Minute},
		{"fresh plan", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := testutil.InBubble(t, cleanFleet)
				p := b.Apply(t, "name: v\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
				victim := p.Items[0].CVMID
				old := "0.5.6"
				b.Sim.SetVMMVersionOf(victim, &old)
				time.Sleep(c.wait)
				before := b.Sim.Stats().Requests
				b.Workers(t, 1, 4)
				b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
				rec, err := b.Store.Record(t.Context(), p.ID, victim)
				if err != nil {
					t.Fatal(err)
				}
				if rec.State != store.Skipped || !strings.Contains(rec.Reason, "HTTP 400") || !strings.Contains(rec.Reason, "VMM") {
					t.Fatalf("%s: %s %q", victim, rec.State, rec.Reason)
				}
				if b.Sim.Stats().PatchesPerCVM[victim] != 0 {
					t.Fatal("the old-VMM CVM was patched")
				}
				if got, want := b.Sim.Stats().Requests-before, int64(2*len(p.Items)); got != want {
					t.Fatalf("workers made %d requests for %d CVMs, want %d (a GET and a PATCH each)", got, len(p.Items), want)
				}
			})
		})
	}
}

// TestNoPatchPastMaxAttempts: when earlier tries used every attempt (the
// last one died mid-way), the next try sends no PATCH and records failed.
func TestNoPatchPastMaxAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, cleanFleet)
		p := b.Apply(t, "name: m\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nretry: {max_attempts: 2}\n")
		victim := p.Items[0].CVMID
		ctx := t.Context()
		// One failed try, then a second that died while running.
		for _, m := range []struct {
			to   store.CVMState
			mode store.Mode
		}{{store.Running, store.ModeBegin}, {store.Pending, store.ModeRequeue}, {store.Running, store.ModeBegin}} {
			if _, err := b.Store.Move(ctx, p.ID, victim, m.to, m.mode, time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		b.Workers(t, 1, 4)
		b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		rec, err := b.Store.Record(ctx, p.ID, victim)
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != store.Failed || !strings.Contains(rec.Reason, "no attempt left") || b.Sim.Stats().PatchesPerCVM[victim] != 0 {
			t.Fatalf("%s: %s %q after %d PATCHes", victim, rec.State, rec.Reason, b.Sim.Stats().PatchesPerCVM[victim])
		}
	})
}
