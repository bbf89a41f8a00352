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
	return c.retry(ctx, id, who, "--failed", nil, now)
}

// RetryIDs is RetryFailed for exactly the CVMs named (retry --ids, e.g.
// from `report --state failed -o ids`): each must be failed in the
// rollout, or nothing changes and the error names the first that is not.
func (c *Control) RetryIDs(ctx context.Context, id, who string, cvms []string, now time.Time) (int, error) {
	if len(cvms) == 0 {
		return 0, fmt.Errorf("retry --ids: no CVM ids given")
	}
	return c.retry(ctx, id, who, "--ids", cvms, now)
}

// retry resets the failed CVMs of only (all failed ones when only is nil).
func (c *Control) retry(ctx context.Context, id, who, how string, only []string, now time.Time) (int, error) {
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
	if only != nil {
		if failed, err = c.onlyFailed(ctx, id, failed, only); err != nil {
			return 0, err
		}
	}
	reset := 0
	if len(failed) > 0 {
		var ne *store.NotAllowedError
		_, reset, err = c.Store.Retry(ctx, id, who, how, failed, now)
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
	// queued twice). The count is what this retry reset: the controller
	// may queue those first (their generation is ahead of what was
	// queued), and they are queued all the same. A retry that reset
	// nothing counts what it queued of an earlier one's.
	n, err := c.requeue(ctx, id, spec)
	if reset > 0 {
		return reset, err
	}
	return n, err
}

// onlyFailed checks that every id of want is failed in rollout id and
// returns them, each once, in the order given.
func (c *Control) onlyFailed(ctx context.Context, id string, failed, want []string) ([]string, error) {
	isFailed := map[string]bool{}
	for _, f := range failed {
		isFailed[f] = true
	}
	var out []string
	seen := map[string]bool{}
	for _, cvm := range want {
		if seen[cvm] {
			continue
		}
		seen[cvm] = true
		if !isFailed[cvm] {
			rec, err := c.Store.Record(ctx, id, cvm)
			if err != nil {
				return nil, fmt.Errorf("retry --ids: CVM %q is not in rollout %s; nothing was retried", cvm, id)
			}
			return nil, fmt.Errorf("retry --ids: CVM %s is %s in rollout %s, not failed; nothing was retried", cvm, rec.State, id)
		}
		out = append(out, cvm)
	}
	return out, nil
}

// requeue queues every pending CVM with a task generation of its own (what
// retries reset) and records the rollout's generation as queued. The
// controller calls it too, for a retry whose process died before it. It
// returns how many CVMs it queued itself.
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
	r, err := c.promotable(ctx, id)
	if err != nil {
		return nil, err
	}
	// Only a stage that is done may be let on: promoting one still at work
	// would pass its gate before anyone saw how it went.
	st := r.Stages[r.Stage]
	if left := st.Left(); left > 0 {
		return nil, fmt.Errorf("promote: stage %d (%s) of %s still has %d CVMs to do; promote it once it is done (status says when it waits)", r.Stage+1, st.Name, id, left)
	}
	return r, c.Store.Promote(ctx, id, r.Stage, who, now)
}

// PromoteFull is promote --full: the current stage moves on as soon as it
// is done (a bake it is in ends now; the operator said to go on whatever
// it shows), and every later stage with promote: manual passes its gate
// when it is done; later bakes still run. One move, recorded in the audit
// trail.
func (c *Control) PromoteFull(ctx context.Context, id, who string, now time.Time) (*store.Rollout, error) {
	r, err := c.promotable(ctx, id)
	if err != nil {
		return nil, err
	}
	return r, c.Store.PromoteFull(ctx, id, r.Stage, who, now)
}

// promotable reads a rollout that has a next stage to promote to.
func (c *Control) promotable(ctx context.Context, id string) (*store.Rollout, error) {
	r, err := c.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Finished() {
		return nil, fmt.Errorf("promote: rollout %s is %s", id, r.State)
	}
	if len(r.Stages) == 0 || r.Stage+1 >= len(r.Stages) {
		return nil, fmt.Errorf("promote: rollout %s is on its last stage; there is no next stage to start", id)
	}
	return r, nil
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
