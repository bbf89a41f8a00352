package control

import (
	"context"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/store"
)

// stageGate says whether the rollout may move past its finished current
// stage at now, and if not, why. The first time it sees the stage done it
// records when, so the bake survives any process restarting.
//
// A stage with promote: manual waits for `rollout promote` (its bake is
// not applied on top). Otherwise the next stage starts once the stage's
// bake has passed since it finished; `promote` ends a bake early.
// `promote --full` (r.Full) passes every manual gate after it too.
func (c *Controller) stageGate(ctx context.Context, r *store.Rollout, now time.Time) (bool, string, error) {
	i := r.Stage
	st := r.Stages[i]
	name := fmt.Sprintf("stage %d (%s)", i+1, st.Name)
	if r.Promoted >= i || r.Full && st.Manual {
		return true, "", nil // promoted, or a manual gate after promote --full
	}
	if st.Manual {
		return false, name + " done; waiting for `rollout promote " + r.ID + "`", nil
	}
	doneAt := st.DoneAt
	if doneAt.IsZero() {
		var err error
		if doneAt, err = c.Store.StageDone(ctx, r.ID, i, now); err != nil {
			return false, "", err
		}
	}
	if until := doneAt.Add(st.Bake); now.Before(until) {
		return false, fmt.Sprintf("%s done; baking until %s", name, until.UTC().Format(time.RFC3339)), nil
	}
	return true, "", nil
}
