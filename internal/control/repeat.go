package control

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
)

// Recurring reconcile (schedule.repeat): a rollout whose file sets repeat
// is re-planned on that period once its latest run has finished, and the
// CVMs that joined the selection or drifted from the target since are
// rolled out to as a new run: a rollout of its own, with the id
// "<id>-run<N>" and its own counts. An operator who applies the file of a
// completed rollout starts runs the same way (Control.reapply). Runs never
// overlap, whatever the number of controllers and operators: a run starts
// only after the latest one finished, its number is reserved on the base
// atomically before it is recorded (nextRun), and run ids are
// deterministic, so a second attempt at the same run continues it instead
// of starting another. A re-plan that finds nothing to patch records only
// the time of the check on the base rollout. `rollout cancel` of the base
// stops the repeats.

// repeatStep starts the next run of base if it is due.
func (c *Controller) repeatStep(ctx context.Context, base string, now time.Time) error {
	b, err := c.Store.Get(ctx, base)
	if err != nil {
		return err
	}
	spec, err := Spec(b)
	if err != nil {
		return err
	}
	if b.State == store.RolloutCancelled || spec.Schedule == nil || spec.Schedule.Repeat <= 0 {
		_, err := c.Store.StopRepeating(ctx, base)
		return err
	}
	if _, _, ended := spec.Schedule.Gate(now); ended {
		_, err := c.Store.StopRepeating(ctx, base)
		return err
	}
	if b.State != store.RolloutCompleted {
		return nil // a run starts only from a completed base (not one retried back to running)
	}
	n := max(atoi(b.Fields["runs"]), 1)
	r, err := c.Store.Get(ctx, runOrBase(base, n))
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Run n was reserved but not recorded (a crash in between):
		// nextRun records it now, from a fresh plan.
	case err != nil:
		return err
	default:
		last := r.UpdatedAt
		if t, err := time.Parse(time.RFC3339Nano, b.Fields["last_check_at"]); err == nil && t.After(last) {
			last = t
		}
		if !finished(r.State) || now.Before(last.Add(spec.Schedule.Repeat)) {
			return nil
		}
	}
	if c.Planner == nil {
		return fmt.Errorf("repeat: this controller has no API client to re-plan with")
	}
	p, err := plan.Build(ctx, c.Planner, spec, 0)
	if err != nil {
		return fmt.Errorf("re-planning after run %d: %w", n, err)
	}
	if p.Counts[plan.Patch] == 0 && r != nil {
		// Nothing drifted: note the check instead of keeping an empty run.
		return c.Store.SetFields(ctx, base, "last_check_at", now.UTC().Format(time.RFC3339Nano),
			"last_check", fmt.Sprintf("no drift in %d selected CVMs", len(p.Items)))
	}
	p.ID = base
	if _, err = c.nextRun(ctx, base, p, "repeat of "+base, now, true); errors.Is(err, errNoRun) {
		return nil // the base was cancelled, retried or rolled back meanwhile: its next tick decides
	}
	return err
}

// RunID names run n (n >= 2) of a repeating rollout; run 1 is the rollout itself.
func RunID(base string, n int) string { return base + "-run" + strconv.Itoa(n) }

// runOrBase is run n of base, where run 1 is base itself.
func runOrBase(base string, n int) string {
	if n > 1 {
		return RunID(base, n)
	}
	return base
}

func finished(state string) bool {
	return state == store.RolloutCompleted || state == store.RolloutCancelled
}
