package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
)

// DefaultPruneGrace is how long after it ended a rollout is kept whatever
// --older-than says: a rollback plans from its per-CVM before-images, and
// a week covers finding out that a change was wrong.
const DefaultPruneGrace = 7 * 24 * time.Hour

// PruneOptions are prune's choices.
type PruneOptions struct {
	OlderThan time.Duration // ended at least this long ago
	Grace     time.Duration // and at least this (0: DefaultPruneGrace)
	All       bool          // also the summary and the audit trail
	DryRun    bool
	// Export, when set, writes a rollout's report before anything of it
	// is deleted (not called again for a prune that had started).
	Export func(ctx context.Context, r *store.Rollout) error
}

// Pruned is one rollout prune removed (or, dry run, would remove).
type Pruned struct {
	ID       string             `json:"id"`
	State    store.RolloutState `json:"state"`
	EndedAt  time.Time          `json:"ended_at"`
	CVMs     int                `json:"cvms"`
	Mode     string             `json:"mode"`               // records or all
	Resumed  bool               `json:"resumed,omitempty"`  // a prune a kill had cut short, finished
	Exported bool               `json:"exported,omitempty"` // its report was written first
}

// Prune removes finished rollouts that ended before now-OlderThan (and
// before now-Grace): their per-CVM records and their tasks left in asynq's
// archive, keeping the summary (counts, times, who) and the audit trail
// unless All. A running, paused or scheduled rollout, one the controller
// still drives, one that repeats, or one in its grace is never pruned.
// A prune a kill cut short is finished by the next, whatever the options
// say of age (store/prune.go gives the order of its steps).
func (c *Control) Prune(ctx context.Context, now time.Time, o PruneOptions) ([]Pruned, error) {
	if o.Grace == 0 {
		o.Grace = DefaultPruneGrace
	}
	cutoff := now.Add(-max(o.OlderThan, o.Grace))
	listed, err := c.Store.Listed(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(listed))
	for id := range listed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []Pruned
	var archived map[string][]string // rollout -> its archived task ids, read once
	for _, id := range ids {
		r := listed[id]
		p, ok, err := c.prunable(ctx, id, r, cutoff, o)
		if err != nil {
			return out, err
		}
		if !ok {
			continue
		}
		if o.DryRun {
			out = append(out, p)
			continue
		}
		if archived == nil {
			if archived, err = c.archivedTasks(); err != nil {
				return out, err
			}
		}
		if err := c.prune(ctx, r, &p, o, archived[id], now); err != nil {
			return out, fmt.Errorf("pruning %s: %w", id, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// prunable judges one index entry.
func (c *Control) prunable(ctx context.Context, id string, r *store.Rollout, cutoff time.Time, o PruneOptions) (Pruned, bool, error) {
	if r == nil {
		// Listed but not recorded: being recorded (it is active meanwhile),
		// or an all prune cut short after its record went.
		active, err := c.Store.InActive(ctx, id)
		if err != nil || active {
			return Pruned{}, false, err
		}
		held, err := c.Store.Creating(ctx, id)
		return Pruned{ID: id, Mode: store.PruneAll, Resumed: true}, err == nil && !held, err
	}
	p := Pruned{ID: id, State: r.State, EndedAt: r.UpdatedAt, CVMs: r.Total, Mode: store.PruneRecords}
	if o.All {
		p.Mode = store.PruneAll
	}
	switch {
	case r.Pruning != "":
		if r.Pruning == store.PruneAll {
			p.Mode = store.PruneAll
		}
		p.Resumed = true
		return p, true, nil
	case !r.PrunedAt.IsZero() && !o.All:
		return p, false, nil // pruned already
	case !r.State.Finished() || r.Counts[store.Pending]+r.Counts[store.Running] > 0 || r.Repeat || r.UpdatedAt.After(cutoff):
		return p, false, nil
	}
	for _, check := range []func(context.Context, string) (bool, error){c.Store.InActive, c.Store.IsRepeating} {
		if busy, err := check(ctx, id); err != nil || busy {
			return p, false, err // still driven, or repeating
		}
	}
	return p, true, nil
}

// prune runs the steps on one rollout (store/prune.go).
func (c *Control) prune(ctx context.Context, r *store.Rollout, p *Pruned, o PruneOptions, archived []string, now time.Time) error {
	if r == nil { // an all prune cut short after the record went
		return c.Store.DropAll(ctx, p.ID)
	}
	if r.Pruning == "" && o.Export != nil {
		if err := o.Export(ctx, r); err != nil {
			return fmt.Errorf("export (nothing deleted): %w", err)
		}
		p.Exported = true
	}
	if err := c.Store.MarkPruning(ctx, r.ID, p.Mode); err != nil {
		return err
	}
	insp := asynq.NewInspectorFromRedisClient(c.Store.Redis())
	for _, t := range archived {
		if err := insp.DeleteTask(tasks.Queue, t); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
			return err
		}
	}
	if err := c.Store.DropRecords(ctx, r.ID, len(r.Stages), func([]string) error { return ctx.Err() }); err != nil {
		return err
	}
	if err := c.Store.DropNotifications(ctx, r.ID); err != nil {
		return err
	}
	var err error
	if p.Mode == store.PruneAll {
		err = c.Store.DropAll(ctx, r.ID)
	} else {
		err = c.Store.MarkPruned(ctx, r.ID, now)
	}
	return err
}

// archivedTasks lists the queue's archived tasks (asynq keeps at most
// 10,000, for 90 days; completed tasks it deletes at once) by rollout.
func (c *Control) archivedTasks() (map[string][]string, error) {
	insp := asynq.NewInspectorFromRedisClient(c.Store.Redis())
	out := map[string][]string{}
	for page := 1; ; page++ {
		ts, err := insp.ListArchivedTasks(tasks.Queue, asynq.Page(page), asynq.PageSize(1000))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return out, nil
		} else if err != nil {
			return nil, err
		}
		for _, t := range ts {
			var pl tasks.Payload
			if json.Unmarshal(t.Payload, &pl) == nil {
				out[pl.Rollout] = append(out[pl.Rollout], t.ID)
			}
		}
		if len(ts) < 1000 {
			return out, nil
		}
	}
}
