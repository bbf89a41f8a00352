package control

import (
	"context"
	"fmt"
	"strconv"
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
func (c *Controller) stageGate(ctx context.Context, r *store.Rollout, now time.Time) (bool, string, error) {
	i := r.Stage
	name := fmt.Sprintf("stage %d (%s)", i+1, r.Stages[i].Name)
	promoted := r.Fields["promoted"] != "" && atoi(r.Fields["promoted"]) >= i
	if promoted {
		return true, "", nil
	}
	if r.Fields[stageField(i, "promote")] == "manual" {
		return false, name + " done; waiting for `rollout promote " + r.ID + "`", nil
	}
	doneAt, err := time.Parse(time.RFC3339Nano, r.Fields[stageField(i, "done_at")])
	if err != nil {
		doneAt = now
		if err := c.Store.SetFields(ctx, r.ID, stageField(i, "done_at"), now.UTC().Format(time.RFC3339Nano)); err != nil {
			return false, "", err
		}
	}
	bake, _ := time.ParseDuration(r.Fields[stageField(i, "bake")])
	if until := doneAt.Add(bake); now.Before(until) {
		return false, fmt.Sprintf("%s done; baking until %s", name, until.UTC().Format(time.RFC3339)), nil
	}
	return true, "", nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
