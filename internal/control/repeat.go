package control

import (
	"context"
	"errors"
	"fmt"
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
// only when no member of the family is going, its number is reserved on
// the root atomically before it is recorded (store.ReserveRun), and run
// ids are deterministic, so a second attempt at the same run continues it
// instead of starting another. A re-plan that finds nothing to patch
// records only the time of the check on the root. `rollout cancel` of the
// root stops the repeats.

// repeatStep starts the next run of root if it is due.
func (c *Controller) repeatStep(ctx context.Context, root string, now time.Time) error {
	b, err := c.Store.Get(ctx, root)
	if errors.Is(err, store.ErrNotFound) {
		if held, err := c.Store.Creating(ctx, root); err != nil || held {
			return err
		}
		_, err := c.Store.StopRepeats(ctx, root, "controller", "", now)
		return err
	} else if err != nil {
		return err
	}
	spec, err := Spec(b)
	if err != nil {
		return err
	}
	_, _, ended := spec.Schedule.Gate(now)
	if !b.Repeat || b.State == store.RolloutCancelled || spec.Schedule == nil || spec.Schedule.Repeat <= 0 || ended {
		_, err := c.Store.StopRepeats(ctx, root, "controller", "repeats stopped", now)
		return err
	}
	if b.State != store.RolloutCompleted {
		return nil // a run starts only from a completed root (not one retried back to running)
	}
	n := max(b.Runs, 1)
	r, err := c.Store.Get(ctx, runOrBase(root, n))
	switch {
	case errors.Is(err, store.ErrNotFound):
		// Run n was reserved but not recorded (a crash in between):
		// nextRun records it now, from a fresh plan.
	case err != nil:
		return err
	default:
		last := r.UpdatedAt
		if b.LastCheckAt.After(last) {
			last = b.LastCheckAt
		}
		if !r.State.Finished() || now.Before(last.Add(spec.Schedule.Repeat)) {
			return nil
		}
	}
	if c.Planner == nil {
		return fmt.Errorf("repeat: this controller has no API client to re-plan with")
	}
	var o plan.Options
	if c.PlanPace != nil {
		o.Pace = c.PlanPace(root, spec)
	}
	p, err := plan.BuildWith(ctx, c.Planner, spec, o)
	if err != nil {
		return fmt.Errorf("re-planning after run %d: %w", n, err)
	}
	if p.Counts[plan.Patch] == 0 && r != nil {
		// Nothing drifted: note the check instead of keeping an empty run.
		return c.Store.NoteCheck(ctx, root, now, fmt.Sprintf("no drift in %d selected CVMs", len(p.Items)))
	}
	p.ID = root
	if _, err = c.nextRun(ctx, root, p, "repeat of "+root, now, true, ApplyOptions{}); errors.Is(err, store.ErrNotAllowed) {
		return nil // the root was cancelled, retried or rolled back meanwhile: its next tick decides
	}
	return err
}
