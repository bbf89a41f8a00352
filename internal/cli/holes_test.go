package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// The tests in this file each pin a safety hole operators hit (issue 8),
// through the commands as an operator types them.

var holeFleet = sim.FleetOptions{CVMs: 30, Seed: 8, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}

// planID is the rollout id `plan` gives file.
func planID(t *testing.T, b *testutil.Bundle, file string) string {
	t.Helper()
	var p plan.Plan
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	return p.ID
}

// TestOverlappingRolloutsRefused: a CVM belongs to at most one active
// rollout. A second file over the same CVMs is refused with one line that
// names the rollout holding them and how many; --allow-overlap skips those
// CVMs with a reason instead; once the first rollout ends, its CVMs are
// free again.
func TestOverlappingRolloutsRefused(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	fileA := testutil.WriteFile(t, "name: first\nselector: {names: [\"prod-*\"]}\ntarget: {kms_urls: [\"https://kms-a.example:8000\"]}\n")
	fileB := testutil.WriteFile(t, "name: second\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-b.example:8000\"]}\n")
	a := planID(t, b, fileA)
	mustRun(t, b, "apply", "-f", fileA, "--yes") // no worker yet: it stays running
	ra, err := b.Store.Get(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	held := ra.Counts[store.Pending]
	_, _, err = run(t, b, "apply", "-f", fileB, "--yes")
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), fmt.Sprint(held)) {
		t.Fatalf("apply of an overlapping file: %v; want one line naming %s and %d CVMs", err, a, held)
	}
	bID := planID(t, b, fileB)
	if _, err := b.Store.Get(context.Background(), bID); err == nil {
		t.Fatal("the refused rollout was recorded")
	}
	if n, _ := b.RDB.Exists(context.Background(), store.RolloutKey(bID), store.OrderKey(bID), store.CVMKey(bID, b.Sim.IDs()[0])).Result(); n != 0 {
		t.Fatalf("the refused rollout left %d keys behind", n)
	}
	out := mustRun(t, b, "apply", "-f", fileB, "--yes", "--allow-overlap")
	if !strings.Contains(out, fmt.Sprintf("Skipped %d CVMs held by active rollout %s", held, a)) {
		t.Fatalf("apply --allow-overlap:\n%s", out)
	}
	rb, err := b.Store.Get(context.Background(), bID)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Counts[store.Skipped] != held || rb.Counts[store.Pending] != len(b.Sim.IDs())-held {
		t.Fatalf("second rollout counts %v, want %d skipped", rb.Counts, held)
	}
	b.Workers(t, 1, 8)
	b.WaitState(t, a, 30*time.Second, store.RolloutCompleted)
	b.WaitState(t, bID, 30*time.Second, store.RolloutCompleted)
	// Every CVM was worked by exactly one of them.
	for _, id := range b.Sim.IDs() {
		if n := b.Sim.Stats().PatchesPerCVM[id]; n != 1 {
			t.Fatalf("%s: %d PATCHes, want 1", id, n)
		}
	}
	// Once both ended, their claims are given back: a third file over
	// the same CVMs goes ahead.
	fileC := testutil.WriteFile(t, "name: third\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-c.example:8000\"]}\n")
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := run(t, b, "apply", "-f", fileC, "--yes")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("apply after both ended: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // the controller settles them within a tick
	}
}

// TestCancelledRollbackIsFinished: a rollback cancelled part-way is not
// "continued" as if nothing happened; `rollback` again records the next
// rollback over the CVMs still not restored, from the same before-images.
func TestCancelledRollbackIsFinished(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: undo\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	id := planID(t, b, file)
	before := map[string]string{}
	for _, cvm := range b.Sim.IDs() {
		kms, _, _ := b.Sim.Config(cvm)
		before[cvm] = fmt.Sprint(kms)
	}
	mustRun(t, b, "apply", "-f", file, "--yes")
	stop := b.Workers(t, 1, 8)
	b.WaitState(t, id, 30*time.Second, store.RolloutCompleted)
	stop()
	b.Sim.SetFaults(sim.Faults{Latency: 150 * time.Millisecond})
	mustRun(t, b, "rollback", id, "--yes")
	stop = b.Workers(t, 1, 2)
	waitCount(t, b, id+"-rollback", store.Succeeded, 4)
	mustRun(t, b, "cancel", id+"-rollback")
	stop()
	b.Sim.SetFaults(sim.Faults{})
	out, errOut, err := run(t, b, "rollback", id, "--yes")
	if err != nil || !strings.Contains(out, "Recorded rollout "+id+"-rollback2") {
		t.Fatalf("rollback after a cancelled rollback: %v\n%s%s", err, out, errOut)
	}
	b.Workers(t, 1, 8)
	r := b.WaitState(t, id+"-rollback2", 30*time.Second, store.RolloutCompleted)
	if r.Counts[store.Failed] != 0 || r.Counts[store.Succeeded]+r.Counts[store.Unchanged] != len(before) || r.Counts[store.Unchanged] < 4 {
		t.Fatalf("the second rollback: %v", r.Counts)
	}
	for cvm, kms := range before {
		if got, _, _ := b.Sim.Config(cvm); fmt.Sprint(got) != kms {
			t.Fatalf("%s at %v, before-image %s", cvm, got, kms)
		}
	}
}

// TestResumeBudgetOnlyWithTheResume: resume --max-failed raises the
// failure budget only if the resume goes ahead, and the audit line says
// the new budget.
func TestResumeBudgetOnlyWithTheResume(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: budget\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nfailure_budget: {max_failed: 2}\n")
	id := planID(t, b, file)
	mustRun(t, b, "apply", "-f", file, "--yes") // running, no worker
	budget := func() string {
		v, _ := b.RDB.HGet(context.Background(), store.RolloutKey(id), "budget_max_failed").Result()
		return v
	}
	run(t, b, "resume", id, "--max-failed", "99") // not paused: nothing to resume
	if got := budget(); got != "2" {
		t.Fatalf("a resume that did not happen raised the budget to %s", got)
	}
	mustRun(t, b, "pause", id)
	mustRun(t, b, "resume", id, "--max-failed", "7")
	if got := budget(); got != "7" {
		t.Fatalf("budget %s after resume --max-failed 7", got)
	}
	out := mustRun(t, b, "events", id)
	if !strings.Contains(out, "max_failed 7") {
		t.Fatalf("the audit trail does not say the new budget:\n%s", out)
	}
}

// TestReasonCannotForgeAuditLine: a --reason is one event, whatever it
// holds: a newline or a carriage return cannot make `events` show a line
// that nobody wrote.
func TestReasonCannotForgeAuditLine(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: forge\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	id := planID(t, b, file)
	mustRun(t, b, "apply", "-f", file, "--yes")
	forged := "maintenance\n2026-01-01T00:00:00Z  mallory  cancel (running -> cancelled)\r2026-01-01T00:00:00Z  mallory  resume"
	mustRun(t, b, "pause", id, "--reason", forged)
	out := mustRun(t, b, "events", id)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for _, l := range lines {
		if strings.Contains(l, "mallory") && !strings.Contains(l, "pause") {
			t.Fatalf("a forged line in events:\n%s", out)
		}
		if strings.Contains(l, "\r") {
			t.Fatalf("a raw carriage return in events:\n%q", out)
		}
	}
	evs, err := b.Store.Events(context.Background(), id, 0)
	if err != nil || len(evs) != 2 || !strings.Contains(evs[1].What, forged) {
		t.Fatalf("events %+v, %v: want applied, then one pause holding the whole reason", evs, err)
	}
}

// TestEmptyAndNothingToDo: a selection that matches nothing is not
// recorded (one line says why); a plan with nothing to patch is recorded
// completed, not running.
func TestEmptyAndNothingToDo(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	empty := testutil.WriteFile(t, "name: empty\nselector: {names: [\"no-such-*\"]}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	if _, _, err := run(t, b, "apply", "-f", empty, "--yes"); err == nil || !strings.Contains(err.Error(), "matches no CVM") {
		t.Fatalf("apply of an empty selection: %v", err)
	}
	if rs, _ := b.Store.List(context.Background()); len(rs) != 0 {
		t.Fatalf("recorded %d rollouts", len(rs))
	}
	cvm := b.Sim.IDs()[0]
	kms, _, _ := b.Sim.Config(cvm)
	same := testutil.WriteFile(t, fmt.Sprintf("name: same\nselector: {ids: [%s]}\ntarget: {kms_urls: [%q]}\n", cvm, kms[0]))
	id := planID(t, b, same)
	mustRun(t, b, "apply", "-f", same, "--yes")
	if r, err := b.Store.Get(context.Background(), id); err != nil || r.State != store.RolloutCompleted {
		t.Fatalf("a rollout with nothing to patch: %+v %v, want completed", r, err)
	}
}

// TestRetryRacesANewRun: a retry --failed and a new run of the same
// rollout (an operator re-applying the file, or schedule.repeat) started
// at the same moment never both go ahead: they would work the same CVMs.
// The new run is started between the retry's checks and its writes.
func TestRetryRacesANewRun(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: race\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	id, bad := completedWithOneFailure(t, b, file)
	var applyOut string
	var applyErr error
	// Just before the first command that may write (a script, or HINCRBY).
	hooked := b.HookedClient(t, &testutil.Before{
		Match: func(c redis.Cmder) bool { return slices.Contains([]string{"evalsha", "eval", "hincrby"}, c.Name()) },
		Fn:    func() { applyOut, _, applyErr = run(t, b, "apply", "-f", file, "--yes") },
	})
	_, retryErr := control.New(hooked).RetryFailed(context.Background(), id, "test", time.Now())
	_, runErr := b.Store.Get(context.Background(), id+"-run2")
	if retryErr == nil && runErr == nil {
		t.Fatalf("both the retry and run 2 went ahead on %s (apply said: %v %s)", bad, applyErr, applyOut)
	}
	if retryErr == nil == (runErr == nil) {
		t.Fatalf("neither went ahead: retry %v, run 2 %v (apply: %v)", retryErr, runErr, applyErr)
	}
}

// TestConcurrentPromoteLoggedOnce: of operators promoting the same stage
// at once, one promotes it; the audit trail says so once.
func TestConcurrentPromoteLoggedOnce(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: prom\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nstages: [{count: 3, promote: manual}, \"100%\"]\n")
	id := planID(t, b, file)
	mustRun(t, b, "apply", "-f", file, "--yes")
	stop := b.Workers(t, 1, 4)
	waitCount(t, b, id, store.Succeeded, 3)
	stop()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { control.New(b.RDB).Promote(context.Background(), id, "op", time.Now()) })
	}
	wg.Wait()
	evs, err := b.Store.Events(context.Background(), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if strings.Contains(e.What, "promoted") {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d promote lines in the audit trail, want 1: %+v", n, evs)
	}
}

// pendingOnce checks that no CVM is pending or running in two rollouts
// at once, across every rollout recorded.
func pendingOnce(t *testing.T, b *testutil.Bundle) {
	t.Helper()
	ctx := context.Background()
	rs, err := b.Store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]string{}
	for _, r := range rs {
		b.Store.Records(ctx, r.ID, func(rec store.CVMRecord) error {
			if !rec.State.Terminal() {
				if other, ok := in[rec.CVMID]; ok {
					t.Fatalf("%s is %s in %s and also to do in %s", rec.CVMID, rec.State, r.ID, other)
				}
				in[rec.CVMID] = r.ID
			}
			return nil
		})
	}
}

// completedWithOneFailure applies file, lets a worker finish it with one
// CVM failed, and clears the failure in the simulator.
func completedWithOneFailure(t *testing.T, b *testutil.Bundle, file string) (id, bad string) {
	t.Helper()
	id = planID(t, b, file)
	bad = b.Sim.IDs()[3]
	b.Sim.FailPatch(bad, 403)
	mustRun(t, b, "apply", "-f", file, "--yes")
	stop := b.Workers(t, 1, 8)
	if r := b.WaitState(t, id, 30*time.Second, store.RolloutCompleted); r.Counts[store.Failed] != 1 {
		t.Fatalf("counts %v", r.Counts)
	}
	stop()
	b.Sim.FailPatch(bad, 0)
	return id, bad
}

// TestSettleRacesRetry: the controller settling a completed rollout (its
// claims given back, out of the active set) while an operator retries it
// leaves the retried rollout driven and its CVMs claimed.
func TestSettleRacesRetry(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: settle\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	id, bad := completedWithOneFailure(t, b, file)
	ctx := context.Background()
	b.RDB.HSet(ctx, store.ActiveKey, id, "x") // as if the controller had not settled it yet
	var retryErr error
	hooked := b.HookedClient(t, &testutil.Before{
		Match: func(c redis.Cmder) bool { return c.Name() == "lrange" && testutil.Names(c, store.OrderKey(id)) },
		Fn:    func() { _, retryErr = control.New(b.RDB).RetryFailed(ctx, id, "op", time.Now()) },
	})
	if _, err := control.New(hooked).Store.Settle(ctx, id); err != nil {
		t.Fatal(err)
	}
	if retryErr != nil {
		t.Fatalf("retry: %v", retryErr)
	}
	if ok, _ := b.RDB.HExists(ctx, store.ActiveKey, id).Result(); !ok {
		t.Fatal("the retried rollout is out of the active set: nothing drives it")
	}
	if owner, _ := b.Store.Owner(ctx, bad); owner != id {
		t.Fatalf("the retried CVM is claimed by %q, want %s", owner, id)
	}
	b.Workers(t, 1, 4)
	b.WaitState(t, id, 30*time.Second, store.RolloutCompleted)
}

// TestRetryRacesANewRunAtItsClaim: a new run recorded between the retry's
// checks and its claims neither has its claims taken nor works a CVM the
// retry works.
func TestRetryRacesANewRunAtItsClaim(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: steal\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	id, bad := completedWithOneFailure(t, b, file)
	ctx := context.Background()
	hooked := b.HookedClient(t, &testutil.Before{
		Match: func(c redis.Cmder) bool { return testutil.Names(c, store.OwnersKey) },
		Fn:    func() { run(t, b, "apply", "-f", file, "--yes") },
	})
	_, retryErr := control.New(hooked).RetryFailed(ctx, id, "op", time.Now())
	_, runErr := b.Store.Get(ctx, id+"-run2")
	if retryErr == nil && runErr == nil {
		t.Fatal("both the retry and run 2 went ahead")
	}
	pendingOnce(t, b)
	holder := id
	if runErr == nil {
		holder = id + "-run2"
	}
	if owner, _ := b.Store.Owner(ctx, bad); owner != holder {
		t.Fatalf("%s is claimed by %q, want %s, which works it", bad, owner, holder)
	}
}

// TestRetryCountsWhatTheControllerQueuedFirst: the controller may queue a
// retry's CVMs (its generation is ahead of what was queued) between the
// retry's reset and its own queueing; retry still says how many CVMs are
// queued again (it said 0, the task ids having kept them from going twice).
func TestRetryCountsWhatTheControllerQueuedFirst(t *testing.T) {
	b := testutil.Setup(t, holeFleet)
	file := testutil.WriteFile(t, "name: count\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	id, _ := completedWithOneFailure(t, b, file)
	ctx := context.Background()
	scans, stepped := 0, false
	hooked := b.HookedClient(t, &testutil.Before{
		// The retry reads the records twice: for its failed CVMs, then,
		// after its reset, for what to queue. The controller goes between.
		Match: func(c redis.Cmder) bool {
			if c.Name() == "lrange" && testutil.Names(c, store.OrderKey(id)) {
				scans++
			}
			return scans == 2
		},
		Fn: func() {
			ctl := &control.Controller{Control: control.New(b.RDB)}
			if err := ctl.Step(ctx, id, time.Now()); err != nil {
				t.Error(err)
			}
			stepped = true
		},
	})
	n, err := control.New(hooked).RetryFailed(ctx, id, "op", time.Now())
	if err != nil || n != 1 || !stepped {
		t.Fatalf("retry: %d queued again (controller stepped first: %v), %v; want 1", n, stepped, err)
	}
	b.Workers(t, 1, 4)
	b.WaitState(t, id, 30*time.Second, store.RolloutCompleted)
}
