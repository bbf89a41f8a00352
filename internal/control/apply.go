// Package control records rollouts and drives them: apply, the controller
// loop that dispatches stages and finishes rollouts, and the operator's
// commands (pause, resume, cancel, promote, retry).
package control

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/redis/go-redis/v9"
)

// Control ties the store and the queue together.
type Control struct {
	Store *store.Store
	Queue *tasks.Enqueuer
}

// New wires a Control to one Redis: the rollout records and the queue.
func New(rdb redis.UniversalClient) *Control {
	return &Control{Store: store.New(rdb), Queue: &tasks.Enqueuer{Client: asynq.NewClientFromRedisClient(rdb)}}
}

// Applied is what apply did.
type Applied struct {
	ID      string `json:"id"`
	Created bool   `json:"created"` // false: the rollout existed and was continued
	Queued  int    `json:"queued"`  // tasks newly queued by this call
	State   string `json:"state"`
	// RunOf is set when the file's rollout had completed and this apply
	// started a new run of it (ID is the run's id).
	RunOf string `json:"run_of,omitempty"`
}

// Apply records the plan as a rollout and queues its first stage. Applying
// the same file again continues the same rollout: nothing is queued twice.
func (c *Control) Apply(ctx context.Context, p *plan.Plan, who string, now time.Time) (Applied, error) {
	spec, err := json.Marshal(p.File)
	if err != nil {
		return Applied{}, err
	}
	nr := store.NewRollout{ID: p.ID, Name: p.Name, Spec: string(spec), SpecHash: p.SpecHash, CreatedBy: who,
		State: store.RolloutRunning, Fields: map[string]string{}}
	for i, st := range p.Stages {
		nr.Stages = append(nr.Stages, st.Name)
		nr.Fields[stageField(i, "bake")] = st.Bake.String()
		nr.Fields[stageField(i, "promote")] = st.Promote
	}
	if b := p.File.FailureBudget; b != nil {
		nr.Fields["budget_max_failed"] = strconv.Itoa(b.Limit(p.Counts[plan.Patch]))
		nr.Fields["budget_min_executed"] = strconv.Itoa(b.MinExecuted)
		nr.Fields["budget_action"] = b.TripState()
	}
	if wait, why, _ := p.File.Schedule.Gate(now); wait > 0 {
		nr.State, nr.Reason = store.RolloutScheduled, why
	}
	for _, it := range p.Items {
		c := store.NewCVM{ID: it.CVMID, Name: it.Name, Stage: -1, Reason: it.Reason}
		if it.Target != nil {
			b, _ := json.Marshal(it.Target)
			c.Target = string(b)
		}
		switch it.Action {
		case plan.Patch:
			c.State, c.Stage, c.Reason = store.Pending, it.Stage, ""
		case plan.Unchanged:
			c.State, c.Reason = store.Unchanged, "already at target at plan time"
		default:
			c.State = store.Skipped
		}
		nr.CVMs = append(nr.CVMs, c)
	}
	created, err := c.Store.Create(ctx, nr, now)
	if err != nil {
		return Applied{}, fmt.Errorf("recording rollout %s: %w", p.ID, err)
	}
	if !created {
		if a, done, err := c.reapply(ctx, p, who, now); done || err != nil {
			return a, err
		}
	}
	out := Applied{ID: p.ID, Created: created}
	// Only the rollout the file names repeats; its runs (RunID) do not.
	if s := p.File.Schedule; created && s != nil && s.Repeat > 0 && p.ID == p.Name+"-"+p.SpecHash[:8] {
		if err := c.Store.Repeat(ctx, p.ID); err != nil {
			return out, err
		}
	}
	r, err := c.Store.Get(ctx, p.ID)
	if err != nil {
		return out, err
	}
	out.State = r.State
	if r.State == store.RolloutRunning {
		out.Queued, err = c.Dispatch(ctx, r, p.File)
	}
	switch {
	case created:
		_ = c.Store.Event(ctx, p.ID, now, who, fmt.Sprintf("applied (%s): %d to patch, %d unchanged, %d skipped; plan hash %s",
			r.State, p.Counts[plan.Patch], p.Counts[plan.Unchanged], p.Counts[plan.Skip], p.Hash))
	case out.Queued > 0:
		_ = c.Store.Event(ctx, p.ID, now, who, fmt.Sprintf("applied again: %d tasks queued that were missing", out.Queued))
	}
	return out, err
}

// Spec decodes the rollout file stored with a rollout.
func Spec(r *store.Rollout) (*plan.File, error) {
	var f plan.File
	if err := json.Unmarshal([]byte(r.Spec), &f); err != nil {
		return nil, fmt.Errorf("rollout %s: stored spec: %w", r.ID, err)
	}
	return &f, nil
}

// Dispatch queues the current stage's pending CVMs (again, harmlessly, if
// they are queued already) and records the stage as dispatched.
func (c *Control) Dispatch(ctx context.Context, r *store.Rollout, spec *plan.File) (int, error) {
	ids, err := c.Store.StageMembers(ctx, r.ID, r.Stage)
	if err != nil {
		return 0, err
	}
	pending, err := c.pendingOnly(ctx, r.ID, ids)
	if err != nil {
		return 0, err
	}
	n, err := c.enqueue(ctx, r.ID, spec, pending)
	if err != nil {
		return n, err
	}
	return n, c.Store.SetFields(ctx, r.ID, "dispatched", r.Stage)
}

// enqueue queues CVMs by their own task generation (0, or the one retry
// --failed gave them), so a CVM is only ever queued under one task id.
func (c *Control) enqueue(ctx context.Context, id string, spec *plan.File, byGen map[int][]string) (int, error) {
	rp := spec.Retry.WithDefaults()
	total := 0
	for gen, ids := range byGen {
		n, err := c.Queue.Enqueue(ctx, id, gen, ids, tasks.EnqueueOptions{MaxAttempts: rp.MaxAttempts, Deadline: rp.Deadline + time.Minute})
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// pendingOnly keeps the ids whose record is still pending, by task generation.
func (c *Control) pendingOnly(ctx context.Context, id string, ids []string) (map[int][]string, error) {
	rdb := c.Store.Redis()
	out := map[int][]string{}
	for start := 0; start < len(ids); start += 1000 {
		part := ids[start:min(start+1000, len(ids))]
		pipe := rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(part))
		for i, cvm := range part {
			cmds[i] = pipe.HMGet(ctx, store.CVMKey(id, cvm), "state", "gen")
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return nil, err
		}
		for i, cmd := range cmds {
			v := cmd.Val()
			if st, _ := v[0].(string); st == store.Pending {
				g, _ := v[1].(string)
				gen, _ := strconv.Atoi(g)
				out[gen] = append(out[gen], part[i])
			}
		}
	}
	return out, nil
}

func stageField(i int, name string) string { return "s:" + strconv.Itoa(i) + ":" + name }

// reapply handles an apply of a file whose rollout exists and has ended.
// A re-run of apply must continue an unfinished rollout (crash safety), but
// must not silently do nothing on an ended one:
//   - cancelled: refused; cancel is final, a new rollout needs a new name;
//   - completed, and the fresh plan finds CVMs to patch (they drifted or
//     joined the selection since): a new run "<id>-run<N>", as
//     schedule.repeat starts them, or the latest run if it is still going;
//   - completed with nothing to patch: reported as is.
//
// done says whether it decided; otherwise Apply continues p.ID as usual.
func (c *Control) reapply(ctx context.Context, p *plan.Plan, who string, now time.Time) (Applied, bool, error) {
	r, err := c.Store.Get(ctx, p.ID)
	if err != nil {
		return Applied{}, true, err
	}
	switch {
	case r.State == store.RolloutCancelled:
		why := ""
		if r.Reason != "" {
			why = " (" + r.Reason + ")"
		}
		return Applied{ID: p.ID, State: r.State}, true, fmt.Errorf("rollout %s was cancelled%s; a cancelled rollout does not start again: give the file a new name to roll out anew", p.ID, why)
	case r.State != store.RolloutCompleted || p.Counts[plan.Patch] == 0:
		return Applied{}, false, nil
	}
	n := max(atoi(r.Fields["runs"]), 1)
	if n > 1 {
		latest, err := c.Store.Get(ctx, RunID(p.ID, n))
		if err != nil {
			return Applied{}, true, err
		}
		if !finished(latest.State) {
			return Applied{ID: latest.ID, State: latest.State, RunOf: p.ID}, true, nil
		}
	}
	base := p.ID
	p.ID = RunID(base, n+1)
	a, err := c.Apply(ctx, p, who, now)
	if err != nil {
		return a, true, err
	}
	a.RunOf = base
	if err := c.Store.SetFields(ctx, base, "runs", n+1, "latest_run", p.ID); err != nil {
		return a, true, err
	}
	_ = c.Store.Event(ctx, base, now, who, fmt.Sprintf("applied again after completion: run %d started as %s (%d to patch)", n+1, p.ID, p.Counts[plan.Patch]))
	return a, true, nil
}
