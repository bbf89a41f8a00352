package control_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
)

const head = "name: c\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nretry: {max_attempts: 3, backoff: {base: 1s, max: 2s}}\n"

// fleet has no old or unknown VMMs, so every CVM is patched.
var fleet = sim.FleetOptions{CVMs: 24, Seed: 11, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}

func get(t *testing.T, b *testutil.Bundle, id string) *store.Rollout {
	t.Helper()
	r, err := b.Store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitFor polls cond once per fake second, up to limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(time.Second) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out after %s (fake time) waiting for %s", limit, what)
}

func accountedFor(t *testing.T, b *testutil.Bundle, p *plan.Plan) map[string]store.CVMRecord {
	t.Helper()
	recs := b.Records(t, p.ID)
	if len(recs) != len(p.Items) {
		t.Fatalf("%d records for %d planned CVMs", len(recs), len(p.Items))
	}
	r := get(t, b, p.ID)
	sum := 0
	for _, n := range r.Counts {
		sum += n
	}
	if sum != r.Total || r.Total != len(p.Items) {
		t.Fatalf("counts %v add up to %d, total %d", r.Counts, sum, r.Total)
	}
	counted := map[store.CVMState]int{}
	for _, rec := range recs {
		counted[rec.State]++
	}
	for st, n := range r.Counts {
		if counted[st] != n {
			t.Fatalf("counter %s=%d but %d records are %s", st, n, counted[st], st)
		}
	}
	return recs
}

func TestStageWaitsForBake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		p := b.Apply(t, head+"stages: [3, \"100%\"]\nbake: 10m\n")
		if len(p.Stages) != 2 || p.Stages[0].Size != 3 {
			t.Fatalf("stages %+v", p.Stages)
		}
		b.Workers(t, 2, 4)
		waitFor(t, 5*time.Minute, "stage 1 done", func() bool { return get(t, b, p.ID).Stages[0].Done() == 3 })
		stageDone := time.Now()
		time.Sleep(9 * time.Minute)
		r := get(t, b, p.ID)
		if r.Stage != 0 || r.Stages[1].Counts[store.Pending] != r.Stages[1].Size || b.Sim.Stats().Patches != 3 {
			t.Fatalf("stage 2 started during the bake: %+v, %d PATCHes", r.Stages, b.Sim.Stats().Patches)
		}
		b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		var lastStage1, firstStage2 time.Time
		for _, rec := range accountedFor(t, b, p) {
			if rec.Stage == 0 && rec.FinishedAt.After(lastStage1) {
				lastStage1 = rec.FinishedAt
			}
			if rec.Stage == 1 && (firstStage2.IsZero() || rec.StartedAt.Before(firstStage2)) {
				firstStage2 = rec.StartedAt
			}
		}
		if firstStage2.Sub(lastStage1) < 10*time.Minute || firstStage2.Sub(stageDone) > 12*time.Minute {
			t.Fatalf("stage 2 started %s after stage 1 ended (bake 10m)", firstStage2.Sub(lastStage1))
		}
	})
}

func TestManualPromote(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		p := b.Apply(t, head+"stages: [{name: canary, count: 2, promote: manual}, \"100%\"]\n")
		b.Workers(t, 1, 4)
		waitFor(t, 5*time.Minute, "canary done", func() bool { return get(t, b, p.ID).Stages[0].Done() == 2 })
		time.Sleep(30 * time.Minute)
		r := get(t, b, p.ID)
		if r.Stage != 0 || r.State != store.RolloutRunning || b.Sim.Stats().Patches != 2 {
			t.Fatalf("moved on without promote: stage %d state %s", r.Stage, r.State)
		}
		if want := "waiting for `rollout promote " + p.ID + "`"; r.Reason == "" || !contains(r.Reason, want) {
			t.Fatalf("reason %q", r.Reason)
		}
		if _, err := b.Control().Promote(context.Background(), p.ID, "test", time.Now()); err != nil {
			t.Fatal(err)
		}
		b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		accountedFor(t, b, p)
	})
}

func TestFailureBudgetTripsAtExactCount(t *testing.T) {
	cases := []struct {
		name        string
		budget      string
		outcomes    string // f: fail, s: succeed, in order
		tripsAtStep int    // 1-based index into outcomes; 0: never
	}{
		{"max 2: third failure", "{max_failed: 2}", "sfsfsfs", 6},
		{"max 0: first failure", "{max_failed: 0}", "ssf", 3},
		{"min_executed holds it back", "{max_failed: 1, min_executed: 6}", "ffffss", 6},
		{"percent of 10, rounded down", "{max_failed: \"25%\"}", "fsfsf", 5}, // 25% of 10 = 2
		{"cancel action", "{max_failed: 1, action: cancel}", "ff", 2},
		{"skipped never counts", "{max_failed: 0}", "kkks", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := testutil.Setup(t, sim.FleetOptions{CVMs: 10, Seed: 2, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
			p := b.Apply(t, head+"failure_budget: "+c.budget+"\n")
			ctx := context.Background()
			for i, o := range c.outcomes {
				to := map[rune]store.CVMState{'f': store.Failed, 's': store.Succeeded, 'k': store.Skipped}[o]
				cvm := p.Items[i].CVMID
				if _, err := b.Store.Move(ctx, p.ID, cvm, store.Running, store.ModeBegin, time.Now()); err != nil {
					t.Fatal(err)
				}
				tr, err := b.Store.Move(ctx, p.ID, cvm, to, store.ModeFinish, time.Now(), "reason", "test")
				if err != nil {
					t.Fatal(err)
				}
				if tripped := tr.Tripped != ""; tripped != (i+1 == c.tripsAtStep) {
					t.Fatalf("step %d (%c): tripped=%q, want a trip at step %d", i+1, o, tr.Tripped, c.tripsAtStep)
				}
				if tr.Tripped != "" {
					want := store.RolloutPaused
					if contains(c.budget, "cancel") {
						want = store.RolloutCancelled
					}
					if r := get(t, b, p.ID); r.State != want || !contains(r.Reason, "failure budget exceeded") {
						t.Fatalf("after the trip: %s (%s)", r.State, r.Reason)
					}
					evs, err := b.Store.Events(ctx, p.ID, 1)
					if err != nil || len(evs) != 1 || evs[0].By != "failure-budget" || !contains(evs[0].What, "rollout "+string(want)) ||
						time.Since(evs[0].At) > time.Minute {
						t.Fatalf("the trip is not in the audit trail: %+v %v", evs, err)
					}
					return
				}
			}
			if c.tripsAtStep != 0 {
				t.Fatal("never tripped")
			}
		})
	}
}

func TestPauseStopsDispatchAndResumeFinishes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		b.Sim.SetFaults(sim.Faults{Latency: time.Second})
		p := b.Apply(t, head)
		b.Workers(t, 1, 3)
		waitFor(t, time.Minute, "some progress", func() bool { return get(t, b, p.ID).Counts[store.Succeeded] >= 3 })
		if _, err := b.Store.Pause(context.Background(), p.ID, "test", "", time.Now()); err != nil {
			t.Fatal(err)
		}
		pausedAt := time.Now()
		time.Sleep(2 * time.Minute)
		r := get(t, b, p.ID)
		if r.Counts[store.Running] != 0 || r.Counts[store.Pending] == 0 {
			t.Fatalf("while paused: %v", r.Counts)
		}
		for _, rec := range b.Records(t, p.ID) {
			if rec.StartedAt.After(pausedAt) {
				t.Fatalf("%s started %s after the pause", rec.CVMID, rec.StartedAt.Sub(pausedAt))
			}
			if rec.State == store.Pending && rec.Attempts != 0 {
				t.Fatalf("%s used %d attempts while paused", rec.CVMID, rec.Attempts)
			}
		}
		patches := b.Sim.Stats().Patches
		time.Sleep(5 * time.Minute)
		if b.Sim.Stats().Patches != patches {
			t.Fatal("PATCHes went on while paused")
		}
		if _, err := b.Store.Resume(context.Background(), p.ID, "test", -1, time.Now()); err != nil {
			t.Fatal(err)
		}
		b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		for id, rec := range accountedFor(t, b, p) {
			if rec.State != store.Succeeded || b.Sim.Stats().PatchesPerCVM[id] != 1 {
				t.Fatalf("%s: %s after %d PATCHes", id, rec.State, b.Sim.Stats().PatchesPerCVM[id])
			}
		}
	})
}

func TestCancelAccountsForEveryCVM(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		b.Sim.SetFaults(sim.Faults{Latency: time.Second})
		p := b.Apply(t, head+"stages: [4, \"100%\"]\n")
		b.Workers(t, 1, 2)
		waitFor(t, time.Minute, "stage 2", func() bool { return get(t, b, p.ID).Stage == 1 && get(t, b, p.ID).Counts[store.Succeeded] >= 6 })
		if _, _, err := b.Store.Cancel(context.Background(), p.ID, "test", "", time.Now()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Minute, "cancel to settle", func() bool {
			r := get(t, b, p.ID)
			return r.Counts[store.Pending]+r.Counts[store.Running] == 0
		})
		recs := accountedFor(t, b, p)
		stats := b.Sim.Stats()
		cancelled := 0
		for id, rec := range recs {
			switch rec.State {
			case store.Cancelled:
				cancelled++
				if stats.PatchesPerCVM[id] != 0 {
					t.Fatalf("cancelled %s was patched", id)
				}
			case store.Succeeded:
				if stats.PatchesPerCVM[id] != 1 {
					t.Fatalf("%s patched %d times", id, stats.PatchesPerCVM[id])
				}
			default:
				t.Fatalf("%s ended %s", id, rec.State)
			}
		}
		if cancelled == 0 {
			t.Fatal("nothing was cancelled")
		}
	})
}

func TestRetryFailed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		p := b.Apply(t, head)
		bad := []string{p.Items[0].CVMID, p.Items[5].CVMID, p.Items[9].CVMID}
		for _, id := range bad {
			b.Sim.FailPatch(id, 403)
		}
		b.Workers(t, 1, 4)
		r := b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		if r.Counts[store.Failed] != 3 {
			t.Fatalf("counts %v", r.Counts)
		}
		for _, id := range bad {
			b.Sim.FailPatch(id, 0)
		}
		// Two operators at once: one resets the 3 CVMs and says so; the
		// other resets none and says what it queued of them, if it got
		// there first; each CVM is queued once (task ids) and patched.
		var wg sync.WaitGroup
		queued := make([]int, 2)
		for i := range 2 {
			wg.Go(func() {
				n, err := b.Control().RetryFailed(context.Background(), p.ID, "test", time.Now())
				if err != nil {
					t.Error(err)
				}
				queued[i] = n
			})
		}
		wg.Wait()
		if max(queued[0], queued[1]) != 3 {
			t.Fatalf("queued %v, want one of them to say 3", queued)
		}
		waitFor(t, time.Hour, "retry to finish", func() bool {
			r := get(t, b, p.ID)
			return r.State == store.RolloutCompleted && r.Counts[store.Succeeded] == len(p.Items)
		})
		for id, rec := range accountedFor(t, b, p) {
			if kms, _, _ := b.Sim.Config(id); rec.State != store.Succeeded || len(kms) != 1 {
				t.Fatalf("%s: %s %v", id, rec.State, kms)
			}
		}
	})
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestRepeatReconcilesDrift: with schedule.repeat, a CVM that drifted from
// the target after the first run is patched again by a second run, one run
// at a time, while two workers' controllers run.
func TestRepeatReconcilesDrift(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		p := b.Apply(t, head+"schedule: {repeat: 10m}\n")
		b.Workers(t, 2, 4)
		b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		drifted := []string{p.Items[1].CVMID, p.Items[7].CVMID}
		for _, id := range drifted {
			b.Sim.SetConfig(id, []string{"https://kms-rogue.example:8000"}, nil)
		}
		time.Sleep(5 * time.Minute)
		if _, err := b.Store.Get(context.Background(), control.RunID(p.ID, 2)); err == nil {
			t.Fatal("run 2 started before the repeat period")
		}
		run2 := control.RunID(p.ID, 2)
		waitFor(t, 10*time.Minute, "run 2", func() bool {
			r, err := b.Store.Get(context.Background(), run2)
			return err == nil && r.State == store.RolloutCompleted
		})
		r := get(t, b, run2)
		if r.Counts[store.Succeeded] != 2 || r.Counts[store.Unchanged] != len(p.Items)-2 {
			t.Fatalf("run 2 counts %v", r.Counts)
		}
		for _, id := range drifted {
			if kms, _, _ := b.Sim.Config(id); kms[0] != "https://kms-new.example:8000" || b.Sim.Stats().PatchesPerCVM[id] != 2 {
				t.Fatalf("%s: %v after %d PATCHes", id, kms, b.Sim.Stats().PatchesPerCVM[id])
			}
		}
		// The check 10 minutes after run 2 finds nothing to do: it is noted
		// on the rollout, and no empty run is kept.
		time.Sleep(12 * time.Minute)
		if _, err := b.Store.Get(context.Background(), control.RunID(p.ID, 3)); err == nil {
			t.Fatal("an empty run 3 was recorded")
		}
		if base := get(t, b, p.ID); !strings.Contains(base.LastCheck, "no drift") {
			t.Fatalf("last check: %q", base.LastCheck)
		}
	})
}

// TestApplyAfterPlannerCrash: a planner killed part-way through apply
// leaves the rollout unready (no task queued) or ready but not dispatched;
// running apply again finishes it with every CVM recorded once and queued
// once.
func TestApplyAfterPlannerCrash(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 40, Seed: 6, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ctx := context.Background()
	f, err := plan.Parse("c.yaml", []byte(head))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(ctx, b.API, f, 4)
	if err != nil {
		t.Fatal(err)
	}
	// Crash 1: killed while writing records: the hash exists without
	// "ready", some CVM records are missing, nothing is queued.
	if _, err := b.Control().Apply(ctx, p, "t", time.Now(), control.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	rdb := b.RDB
	rdb.HDel(ctx, store.RolloutKey(p.ID), "ready")
	for _, it := range p.Items[:10] {
		rdb.Del(ctx, store.CVMKey(p.ID, it.CVMID))
	}
	rdb.FlushDB(ctx) // and the queue with it, as if nothing had been enqueued
	for _, it := range p.Items[10:] {
		rdb.HSet(ctx, store.CVMKey(p.ID, it.CVMID), "state", "pending", "stage", 0)
	}
	rdb.HSet(ctx, store.RolloutKey(p.ID), "id", p.ID, "state", "running")
	a, err := b.Control().Apply(ctx, p, "t", time.Now(), control.ApplyOptions{})
	if err != nil || !a.Created || a.Queued != len(p.Items) {
		t.Fatalf("re-apply after a crash mid-write: %+v, %v", a, err)
	}
	accountedFor(t, b, p)
	// Crash 2: killed after recording, before queueing: the records are
	// ready but the queue is empty. Apply again queues them, once.
	keys, _ := rdb.Keys(ctx, "asynq:*").Result()
	rdb.Del(ctx, keys...)
	rdb.HSet(ctx, store.RolloutKey(p.ID), "dispatched", -1)
	a, err = b.Control().Apply(ctx, p, "t", time.Now(), control.ApplyOptions{})
	if err != nil || a.Created || a.Queued != len(p.Items) {
		t.Fatalf("apply after a crash before queueing: %+v, %v", a, err)
	}
	a, err = b.Control().Apply(ctx, p, "t", time.Now(), control.ApplyOptions{})
	if err != nil || a.Created || a.Queued != 0 {
		t.Fatalf("a further apply queued again: %+v, %v", a, err)
	}
	b.Workers(t, 1, 8)
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	for id, n := range b.Sim.Stats().PatchesPerCVM {
		if n != 1 {
			t.Errorf("%s patched %d times", id, n)
		}
	}
	if r := get(t, b, p.ID); r.Counts[store.Succeeded] != len(p.Items) {
		t.Fatalf("counts %v", r.Counts)
	}
}

// TestReapplyAfterRetryQueuesNothingTwice: after retry --failed gave one
// CVM a new task generation, applying the file again must not queue the
// other pending CVMs under that generation too.
func TestReapplyAfterRetryQueuesNothingTwice(t *testing.T) {
	b := testutil.Setup(t, fleet)
	ctx := context.Background()
	p := b.Apply(t, head)
	failed := p.Items[2].CVMID
	for _, m := range []struct {
		to   store.CVMState
		mode store.Mode
	}{{store.Running, store.ModeBegin}, {store.Failed, store.ModeFinish}} {
		if _, err := b.Store.Move(ctx, p.ID, failed, m.to, m.mode, time.Now(), "reason", "t"); err != nil {
			t.Fatal(err)
		}
	}
	// As a worker would have: a CVM recorded failed has no task left.
	if err := asynq.NewInspectorFromRedisClient(b.RDB).DeleteTask(tasks.Queue, tasks.TaskID(tasks.Payload{Rollout: p.ID, CVM: failed})); err != nil {
		t.Fatal(err)
	}
	n, err := b.Control().RetryFailed(ctx, p.ID, "test", time.Now())
	if err != nil || n != 1 {
		t.Fatalf("retry: %d %v", n, err)
	}
	a, err := b.Control().Apply(ctx, p, "t", time.Now(), control.ApplyOptions{})
	if err != nil || a.Queued != 0 {
		t.Fatalf("re-apply after retry queued %d (%v)", a.Queued, err)
	}
	b.Workers(t, 1, 4)
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	for id, n := range b.Sim.Stats().PatchesPerCVM {
		if n != 1 {
			t.Errorf("%s patched %d times", id, n)
		}
	}
}

// TestRunsAfterCompletion: re-applying a completed rollout's file with
// drift starts the next run; a run whose number was reserved but which was
// never recorded (a crash in between) is recorded under that number, not
// nested; nothing starts once end_at has passed.
func TestRunsAfterCompletion(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 10, Seed: 4, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ctx := context.Background()
	file := head + "schedule: {end_at: " + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + "}\n"
	p := b.Apply(t, file)
	b.Workers(t, 1, 4)
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	replan := func(at time.Time) (control.Applied, error) {
		f, err := plan.Parse("test.yaml", []byte(file))
		if err != nil {
			t.Fatal(err)
		}
		q, err := plan.Build(ctx, b.API, f, 4)
		if err != nil {
			t.Fatal(err)
		}
		return b.Control().Apply(ctx, q, "test", at, control.ApplyOptions{})
	}
	b.Sim.SetConfig(p.Items[1].CVMID, []string{"https://kms-drift.example:8000"}, nil)
	// The crash window: run 2 reserved on the base, never recorded (its
	// reservation's lease ran out).
	if err := b.RDB.HSet(ctx, store.RolloutKey(p.ID), "runs", 2, "latest_run", control.RunID(p.ID, 2)).Err(); err != nil {
		t.Fatal(err)
	}
	a, err := replan(time.Now())
	if err != nil || a.ID != control.RunID(p.ID, 2) || !a.Created || a.RunOf != p.ID {
		t.Fatalf("apply after the crash window: %+v %v, want run 2 recorded", a, err)
	}
	b.WaitState(t, a.ID, 30*time.Second, store.RolloutCompleted)
	b.Sim.SetConfig(p.Items[2].CVMID, []string{"https://kms-drift.example:8000"}, nil)
	if a, err = replan(time.Now()); err != nil || a.ID != control.RunID(p.ID, 3) || !a.Created {
		t.Fatalf("next apply: %+v %v, want run 3", a, err)
	}
	if r := get(t, b, p.ID); r.Runs != 3 || r.LatestRun != a.ID {
		t.Fatalf("base runs %d, latest %s", r.Runs, r.LatestRun)
	}
	b.WaitState(t, a.ID, 30*time.Second, store.RolloutCompleted)
	b.Sim.SetConfig(p.Items[3].CVMID, []string{"https://kms-drift.example:8000"}, nil)
	if a, err = replan(time.Now().Add(2 * time.Hour)); err == nil || !contains(err.Error(), "end_at") {
		t.Fatalf("apply after end_at: %+v %v", a, err)
	}
	// While a run is going (here: reserved and being recorded, its
	// creation lease held), the base's retry and rollback refuse: they
	// would work its CVMs twice at once. A reservation abandoned by a crash
	// (no lease) blocks nothing.
	if err := b.RDB.HSet(ctx, store.RolloutKey(p.ID), "runs", 9).Err(); err != nil {
		t.Fatal(err)
	}
	lease := store.CreatingKey(control.RunID(p.ID, 9))
	if err := b.RDB.Set(ctx, lease, "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	b.RDB.SAdd(ctx, store.GoingKey(p.ID), control.RunID(p.ID, 9)) // as ReserveRun does
	if _, err := b.Control().RetryFailed(ctx, p.ID, "test", time.Now()); err == nil || !contains(err.Error(), "is still going") {
		t.Fatalf("retry of the base during a run: %v", err)
	}
	if _, err := b.Control().PlanRollback(ctx, b.API, p.ID); err == nil || !contains(err.Error(), "is still going") {
		t.Fatalf("rollback of the base during a run: %v", err)
	}
	b.RDB.Del(ctx, lease)
	if _, err := b.Control().RetryFailed(ctx, p.ID, "test", time.Now()); err != nil {
		t.Fatalf("retry after an abandoned reservation: %v", err)
	}
	// With run 9 abandoned, run 3 (the newest recorded) is the latest: it
	// can be rolled back; run 2, older, cannot (the guard does not watch it).
	if _, err := b.Control().PlanRollback(ctx, b.API, control.RunID(p.ID, 3)); err != nil {
		t.Fatalf("rollback of the latest recorded run: %v", err)
	}
	if _, err := b.Control().PlanRollback(ctx, b.API, control.RunID(p.ID, 2)); err == nil || !contains(err.Error(), "can still be retried or rolled back") {
		t.Fatalf("rollback of an older run: %v", err)
	}
}

// TestRollbackStopsRunsOfItsBase: rolling back a repeating rollout stops its
// repeats, and no run starts while the rollback is going (a run would patch
// the restored CVMs back).
func TestRollbackStopsRunsOfItsBase(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 8, Seed: 6, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ctx := context.Background()
	file := head + "schedule: {repeat: 1h}\n"
	p := b.Apply(t, file)
	stop := b.Workers(t, 1, 4)
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	stop() // no worker: the rollback stays running
	if ids, _ := b.Store.Repeating(ctx); !slices.Contains(ids, p.ID) {
		t.Fatalf("repeating %v lacks %s", ids, p.ID)
	}
	rp, err := b.Control().PlanRollback(ctx, b.API, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Control().ApplyRollback(ctx, rp, p.ID, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	if ids, _ := b.Store.Repeating(ctx); slices.Contains(ids, p.ID) {
		t.Fatal("the rollback did not stop the repeats")
	}
	// Re-applying the file now finds every CVM "drifted" (the rollback is
	// about to restore them), but no run starts while the rollback goes.
	f, err := plan.Parse("test.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	b.Sim.SetConfig(p.Items[0].CVMID, []string{"https://kms-drift.example:8000"}, nil)
	q, err := plan.Build(ctx, b.API, f, 4)
	if err != nil {
		t.Fatal(err)
	}
	if a, err := b.Control().Apply(ctx, q, "test", time.Now(), control.ApplyOptions{}); err == nil || !contains(err.Error(), control.RollbackID(p.ID)+" is going") {
		t.Fatalf("apply during the rollback: %+v %v", a, err)
	}
	// Nor does a run whose number a crashed process reserved but never
	// recorded: it is recorded only under the same checks.
	if err := b.RDB.HSet(ctx, store.RolloutKey(p.ID), "runs", 2).Err(); err != nil {
		t.Fatal(err)
	}
	if a, err := b.Control().Apply(ctx, q, "test", time.Now(), control.ApplyOptions{}); err == nil || !contains(err.Error(), control.RollbackID(p.ID)+" is going") {
		t.Fatalf("apply with a reserved run during the rollback: %+v %v", a, err)
	}
	if _, err := b.Store.Get(ctx, control.RunID(p.ID, 2)); err == nil {
		t.Fatal("the reserved run was recorded while the rollback goes")
	}
	// Nor while a rollback is being recorded: its record not written yet,
	// its creation lease held.
	b.RDB.Del(ctx, store.RolloutKey(control.RollbackID(p.ID)))
	if err := b.RDB.Set(ctx, store.CreatingKey(control.RollbackID(p.ID)), "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	b.RDB.SAdd(ctx, store.GoingKey(p.ID), control.RollbackID(p.ID)) // as Create does
	if a, err := b.Control().Apply(ctx, q, "test", time.Now(), control.ApplyOptions{}); err == nil || !contains(err.Error(), control.RollbackID(p.ID)+" is going") {
		t.Fatalf("apply while a rollback is being recorded: %+v %v", a, err)
	}
}
