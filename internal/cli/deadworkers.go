package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/phalafleet/rollout/internal/store"
)

// statusWithDead is `status -o json` with the dead workers' CVMs, while
// there are any, and the rollout's rate.
type statusWithDead struct {
	Status
	DeadWorkerSlots []store.DeadWorkerSlots `json:"dead_worker_slots,omitempty"`
	Rate            *RateStatus             `json:"rate,omitempty"`
}

// writeStatusJSON writes s with the CVMs of the rollout that dead workers
// held, and its rate.
func writeStatusJSON(ctx context.Context, w io.Writer, st *store.Store, s Status) error {
	ds, err := store.NewLimits(st.Redis()).DeadWorkerSlots(ctx, s.ID)
	if err != nil {
		return err
	}
	rs, err := rateStatus(ctx, st, s.Rollout)
	if err != nil {
		return err
	}
	return writeJSON(w, statusWithDead{Status: s, DeadWorkerSlots: ds, Rate: rs})
}

// printDeadWorkers prints a line per dead worker that held CVMs of the
// rollout: "N CVMs held by dead worker HOST/PID". It lasts until asynq
// hands those CVMs' tasks out again (its lease on them, 30s to about 90s
// after the death); their in-flight slots come back sooner, at the
// controller's first tick after the worker's heartbeat lapses. The rest
// of status stands if this check fails: it says so in a line.
func printDeadWorkers(ctx context.Context, w io.Writer, st *store.Store, id string) {
	ds, err := store.NewLimits(st.Redis()).DeadWorkerSlots(ctx, id)
	if err != nil {
		fmt.Fprintf(w, "\nDead workers: could not check: %v\n", err)
	}
	if len(ds) == 0 {
		return
	}
	fmt.Fprintln(w)
	for _, d := range ds {
		how := "their in-flight slots are free again; asynq retries them once its lease on their tasks ends"
		if d.Freed < d.Slots {
			how = fmt.Sprintf("%d in-flight slots not freed yet: the controller frees them within seconds", d.Slots-d.Freed)
		}
		fmt.Fprintf(w, "%d CVMs held by dead worker %s (%s)\n", d.Slots, d.Worker, how)
	}
}
