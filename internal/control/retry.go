package control

import (
	"context"
	"errors"
	"fmt"
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
	if run, err := c.liveRun(ctx, r); err != nil || run != "" {
		return 0, errors.Join(err, runGoing("retry", id, run))
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

// liveRun is the id of r's latest run (see nextRun) while that run has not
// finished, else "". A base and its runs are separate rollouts with their
// own limits: retrying or rolling back the base while a run is going
// would work the same CVMs twice at once.
func (c *Control) liveRun(ctx context.Context, r *store.Rollout) (string, error) {
	n := atoi(r.Fields["runs"])
	if n < 2 {
		return "", nil
	}
	run, err := c.Store.Get(ctx, RunID(r.ID, n))
	if errors.Is(err, store.ErrNotFound) {
		return RunID(r.ID, n), nil // reserved, being recorded
	} else if err != nil {
		return "", err
	}
	if finished(run.State) {
		return "", nil
	}
	return run.ID, nil
}

func runGoing(cmd, id, run string) error {
	if run == "" {
		return nil
	}
	return fmt.Errorf("%s: rollout %s has a run going (%s); wait for it to end, or %s the run itself", cmd, id, run, cmd)
}
