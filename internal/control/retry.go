package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/phalafleet/rollout/internal/store"
)

// RetryFailed puts a rollout's failed CVMs back to pending and queues them
// under a new task generation. A finished rollout runs again; a paused one
// stays paused (its tasks wait for resume). Two operators retrying at once
// each queue only the CVMs they reset, so none is queued twice.
func (c *Control) RetryFailed(ctx context.Context, id, who string, now time.Time) (int, error) {
	r, err := c.Store.Get(ctx, id)
	if err != nil {
		return 0, err
	}
	if r.State == store.RolloutCancelled {
		return 0, fmt.Errorf("retry: rollout %s is cancelled; apply a new rollout instead", id)
	}
	if err := c.watched(ctx, "retry", r); err != nil {
		return 0, err
	}
	if other, err := c.busy(ctx, baseOf(r), id); err != nil {
		return 0, err
	} else if other != "" {
		return 0, busyError("retry", id, other)
	}
	spec, err := Spec(r)
	if err != nil {
		return 0, err
	}
	ids, _, err := c.Store.ResetFailed(ctx, id, now)
	if err != nil {
		return 0, err
	}
	// Queue what was reset now and any CVM an earlier, interrupted retry
	// reset but did not get to queue: every pending CVM with a generation
	// of its own (task ids keep a CVM from being queued twice).
	byGen := map[int][]string{}
	if err := c.Store.Records(ctx, id, func(rec store.CVMRecord) error {
		if rec.State == store.Pending && rec.Gen > 0 {
			byGen[rec.Gen] = append(byGen[rec.Gen], rec.CVMID)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	if len(ids) == 0 && len(byGen) == 0 {
		return 0, nil
	}
	if _, _, err := c.Store.SetState(ctx, id, store.RolloutRunning, "", now, store.RolloutCompleted); err != nil {
		return 0, err
	}
	if err := c.Store.Reactivate(ctx, id); err != nil {
		return 0, err
	}
	_ = c.Store.Event(ctx, id, now, who, fmt.Sprintf("retry --failed: %d failed CVMs re-queued", len(ids)))
	return c.enqueue(ctx, id, spec, byGen)
}

// Promote lets the current stage move on once it is done: past a manual
// gate, or before its bake has run out.
func (c *Control) Promote(ctx context.Context, id, who string, now time.Time) (*store.Rollout, error) {
	r, err := c.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State == store.RolloutCompleted || r.State == store.RolloutCancelled {
		return nil, fmt.Errorf("promote: rollout %s is %s", id, r.State)
	}
	// Only a stage that is done may be let on: promoting one still at work
	// would pass its gate before anyone saw how it went.
	if len(r.Stages) == 0 || r.Stage+1 >= len(r.Stages) {
		return nil, fmt.Errorf("promote: rollout %s is on its last stage; there is no next stage to start", id)
	}
	st := r.Stages[r.Stage]
	if left := st.Counts[store.Pending] + st.Counts[store.Running]; left > 0 {
		return nil, fmt.Errorf("promote: stage %d (%s) of %s still has %d CVMs to do; promote it once it is done (status says when it waits)", r.Stage+1, st.Name, id, left)
	}
	if err := c.Store.SetFields(ctx, id, "promoted", r.Stage); err != nil {
		return nil, err
	}
	_ = c.Store.Event(ctx, id, now, who, fmt.Sprintf("stage %d promoted", r.Stage+1))
	return r, nil
}

// baseOf is the rollout whose file r came from: r itself, or the root of
// its family (recorded on runs and rollbacks).
func baseOf(r *store.Rollout) string {
	for _, f := range []string{"family", "run_of", "rollback_of"} {
		if b := r.Fields[f]; b != "" {
			return b
		}
	}
	return r.ID
}

// family lists the rollouts the family guard watches for root: the root,
// its latest run, and the rollbacks of both. The latest run is the newest
// one recorded or being recorded; a reservation abandoned by a crash (no
// record, no creation lease) is skipped, so it blocks nothing.
func (c *Control) family(ctx context.Context, root string) ([]string, error) {
	b, err := c.Store.Get(ctx, root)
	if err != nil {
		return nil, err
	}
	ids := []string{root, RollbackID(root)}
	for n := atoi(b.Fields["runs"]); n >= 2; n-- {
		run := RunID(root, n)
		_, err := c.Store.Get(ctx, run)
		if errors.Is(err, store.ErrNotFound) {
			held, err := c.Store.Creating(ctx, run)
			if err != nil {
				return nil, err
			}
			if !held {
				continue // abandoned reservation: the run before it is the latest
			}
		} else if err != nil {
			return nil, err
		}
		return append(ids, run, RollbackID(run)), nil
	}
	return ids, nil
}

// watched refuses to retry or roll back a rollout the family guard does
// not watch (an older run, the rollback of one, a rollback of a rollback):
// it could then run beside a newer member on the same CVMs.
func (c *Control) watched(ctx context.Context, cmd string, r *store.Rollout) error {
	ids, err := c.family(ctx, baseOf(r))
	if err != nil {
		return err
	}
	if !slices.Contains(ids, r.ID) {
		return fmt.Errorf("%s: %s is not one of %v, the rollouts of its family that can still be retried or rolled back (the rollout, its latest run and their rollbacks)", cmd, r.ID, ids)
	}
	return nil
}

// busy is a rollout of root's family (see family), other than self, that
// has not finished, or "". They are separate rollouts with their own
// limits, so two of them working the same CVMs at once would PATCH (and
// restart) a CVM twice: retry, rollback and a new run each wait until the
// others have ended.
func (c *Control) busy(ctx context.Context, root, self string) (string, error) {
	ids, err := c.family(ctx, root)
	if err != nil {
		return "", err
	}
	for _, id := range ids {
		if id == self {
			continue
		}
		r, err := c.Store.Get(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			if held, err := c.Store.Creating(ctx, id); err != nil || held {
				return id, err
			}
			continue
		} else if err != nil {
			return "", err
		}
		if !finished(r.State) {
			return id, nil
		}
	}
	return "", nil
}

func busyError(cmd, id, other string) error {
	return fmt.Errorf("%s: %s is still going, and works the same CVMs as %s; wait for it to end (or pause, then cancel it)", cmd, other, id)
}
