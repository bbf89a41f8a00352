package tasks_test

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

const restartFile = "name: r\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"], restart: true}\nretry: {max_attempts: 3, deadline: 2m, backoff: {base: 1s, max: 2s}}\n"

var cleanFleet = sim.FleetOptions{CVMs: 6, Seed: 9, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}

// TestRestartWaitsForRunning: with restart: true a CVM is succeeded only
// once it is running again; one that never comes back fails with that
// reason, and is not patched again.
func TestRestartWaitsForRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, cleanFleet)
		b.Sim.SetFaults(sim.Faults{RestartTime: 40 * time.Second})
		ids := b.Sim.IDs()
		b.Sim.NeverComesBack(ids[0])
		start := time.Now()
		p := b.Apply(t, restartFile)
		b.Workers(t, 1, 8)
		r := b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		if r.Counts[store.Succeeded] != len(ids)-1 || r.Counts[store.Failed] != 1 {
			t.Fatalf("counts %v", r.Counts)
		}
		stats := b.Sim.Stats()
		for id, rec := range b.Records(t, p.ID) {
			if stats.PatchesPerCVM[id] != 1 {
				t.Errorf("%s patched %d times", id, stats.PatchesPerCVM[id])
			}
			if id == ids[0] {
				if rec.State != store.Failed || !strings.Contains(rec.Reason, "not running again") {
					t.Errorf("never-back CVM: %s %q", rec.State, rec.Reason)
				}
				continue
			}
			if rec.State != store.Succeeded || rec.FinishedAt.Sub(start) < 40*time.Second {
				t.Errorf("%s: %s after %s", id, rec.State, rec.FinishedAt.Sub(start))
			}
		}
	})
}

// TestConflictIsRetried: 409 (another operation in progress) is retried
// after a wait and then succeeds.
func TestConflictIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, cleanFleet)
		f, _ := plan.Parse("c.yaml", []byte(strings.NewReplacer(", restart: true", "", "max_attempts: 3", "max_attempts: 6").Replace(restartFile)))
		p, err := plan.Build(context.Background(), b.API, f, 2)
		if err != nil {
			t.Fatal(err)
		}
		busy := p.Items[0].CVMID
		b.Sim.FailPatch(busy, 409)
		if _, err := b.Control().Apply(context.Background(), p, "t", time.Now(), control.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		b.Workers(t, 1, 4)
		for b.Sim.Stats().Requests < 20 {
			time.Sleep(time.Second)
		}
		time.Sleep(time.Second)
		b.Sim.FailPatch(busy, 0)
		b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		rec, err := b.Store.Record(context.Background(), p.ID, busy)
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != store.Succeeded || rec.Attempts < 2 {
			t.Fatalf("409 CVM: %+v", rec)
		}
	})
}
