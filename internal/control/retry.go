package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
)

// RetryFailed puts a rollout's failed CVMs back to pending and queues them
// under a new task generation. A finished rollout runs again; a paused one
// stays paused (its tasks wait for resume). The move comes first (it
// checks, atomically, that no other member of the family is going, and
// then makes this one going, so none starts meanwhile); then the reset
// CVMs are claimed again: one that another rollout took since this one
// ended is not worked twice, but recorded failed again, naming it.
func (c *Control) RetryFailed(ctx context.Context, id, who string, now time.Time) (int, error) {
	r, err := c.Store.Get(ctx, id)
	if err != nil {
		return 0, err
	}
	if r.State == store.RolloutCancelled {
		return 0, fmt.Errorf("retry: rollout %s is cancelled; apply a new rollout instead", id)
	}
	if err := c.idle(ctx, "retry", id); err != nil {
		return 0, err
	}
	if err := c.watched(ctx, "retry", r); err != nil {
		return 0, err
	}
	spec, err := Spec(r)
	if err != nil {
		return 0, err
	}
	failed, err := c.Store.FailedIDs(ctx, id)
	if err != nil {
		return 0, err
	}
	if len(failed) > 0 {
		var ne *store.NotAllowedError
		_, _, err = c.Store.Retry(ctx, id, who, failed, now)
		switch {
		case errors.As(err, &ne) && ne.State == store.RolloutCancelled:
			return 0, fmt.Errorf("retry: rollout %s is cancelled; apply a new rollout instead", id)
		case errors.As(err, &ne) && ne.State != "" && ne.Why == refusedNoFailed:
			// Another operator's retry reset them first.
		case err != nil:
			return 0, err
		}
	}
	// Queue what was reset now and any CVM an earlier, interrupted retry
	// reset but did not get to queue (task ids keep a CVM from being
	// queued twice).
	return c.requeue(ctx, id, spec)
}

// requeue queues every pending CVM with a task generation of its own (what
// retries reset) and records the rollout's generation as queued. The
// controller calls it too, for a retry whose process died before it.
func (c *Control) requeue(ctx context.Context, id string, spec *plan.File) (int, error) {
	r, err := c.Store.Get(ctx, id)
	if err != nil {
		return 0, err
	}
	byGen := map[int][]string{}
	var ids []string
	if err := c.Store.Records(ctx, id, func(rec store.CVMRecord) error {
		if rec.State == store.Pending && rec.Gen > 0 {
			byGen[rec.Gen] = append(byGen[rec.Gen], rec.CVMID)
			ids = append(ids, rec.CVMID)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	// Claimed before they are queued; one another rollout holds now
	// goes back to failed instead.
	taken, err := c.Store.ClaimFree(ctx, id, ids)
	if err != nil {
		return 0, err
	}
	for cvm, owner := range taken {
		if _, err := c.Store.Move(ctx, id, cvm, store.Failed, store.ModeFinish, time.Now(),
			"reason", "not retried: it is in active rollout "+owner+" now; retry --failed again once that ends",
			"finished_at", time.Now().UTC().Format(time.RFC3339Nano)); err != nil {
			return 0, err
		}
		for g, l := range byGen {
			byGen[g] = slices.DeleteFunc(l, func(c string) bool { return c == cvm })
		}
	}
	n, err := c.enqueue(ctx, id, spec, byGen)
	if err != nil {
		return n, err
	}
	return n, c.Store.Requeued(ctx, id, r.Gen)
}

// Promote lets the current stage move on once it is done: past a manual
// gate, or before its bake has run out. Of two promotes at once, one is
// recorded; the other is told the stage moved on.
func (c *Control) Promote(ctx context.Context, id, who string, now time.Time) (*store.Rollout, error) {
	r, err := c.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Finished() {
		return nil, fmt.Errorf("promote: rollout %s is %s", id, r.State)
	}
	// Only a stage that is done may be let on: promoting one still at work
	// would pass its gate before anyone saw how it went.
	if len(r.Stages) == 0 || r.Stage+1 >= len(r.Stages) {
		return nil, fmt.Errorf("promote: rollout %s is on its last stage; there is no next stage to start", id)
	}
	st := r.Stages[r.Stage]
	if left := st.Left(); left > 0 {
		return nil, fmt.Errorf("promote: stage %d (%s) of %s still has %d CVMs to do; promote it once it is done (status says when it waits)", r.Stage+1, st.Name, id, left)
	}
	return r, c.Store.Promote(ctx, id, r.Stage, who, now)
}

// refusedNoFailed is store's refusal of a retry with no failed CVM.
const refusedNoFailed = "it has no failed CVMs"

// idle refuses cmd on id while another member of its family is going,
// with the member's name: a check for a clear answer before a long step;
// the store's operations check again atomically.
func (c *Control) idle(ctx context.Context, cmd, id string) error {
	other, err := c.Store.Busy(ctx, id)
	if err == nil && other != "" {
		err = &store.BusyError{Op: cmd, ID: id, Other: other}
	}
	return err
}

// watched refuses to retry or roll back a rollout the family guard does
// not watch (an older run, the rollback of one, a rollback that is not the
// latest of its rollout): it would work CVMs a newer member has worked
// since. The watched ones are the root, its latest run, and the latest
// rollback of each.
func (c *Control) watched(ctx context.Context, cmd string, r *store.Rollout) error {
	if r.Pruning != "" || !r.PrunedAt.IsZero() {
		return fmt.Errorf("%s: %s was pruned (rollout prune): its per-CVM records are gone", cmd, r.ID)
	}
	target := r
	if r.RollbackOf != "" {
		o, err := c.Store.Get(ctx, r.RollbackOf)
		if err != nil {
			return err
		}
		if o.LatestRollback != "" && o.LatestRollback != r.ID {
			return fmt.Errorf("%s: %s is not the latest rollback of %s (%s is)", cmd, r.ID, o.ID, o.LatestRollback)
		}
		target = o
	}
	latest, err := c.latestRun(ctx, r.Family)
	if err != nil {
		return err
	}
	if target.ID != latest && target.ID != r.Family {
		return fmt.Errorf("%s: %s is neither %s nor its latest run (%s): only those and their latest rollbacks can still be retried or rolled back", cmd, target.ID, r.Family, latest)
	}
	return nil
}

// latestRun is the newest run of root that is recorded or being recorded
// (a reservation abandoned by a crash does not count).
func (c *Control) latestRun(ctx context.Context, root string) (string, error) {
	b, err := c.Store.Get(ctx, root)
	if err != nil {
		return "", err
	}
	for n := b.Runs; n >= 2; n-- {
		_, err := c.Store.Get(ctx, RunID(root, n))
		if err == nil {
			return RunID(root, n), nil
		} else if !errors.Is(err, store.ErrNotFound) {
			return "", err
		}
		if held, err := c.Store.Creating(ctx, RunID(root, n)); err != nil || held {
			return RunID(root, n), err
		}
	}
	return root, nil
}
