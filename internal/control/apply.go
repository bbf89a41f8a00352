// Package control is the one entry point for what changes a rollout:
// Apply, Pause, Resume, Cancel, Promote, RetryFailed and the rollback,
// for the CLI, the controller loop (which dispatches stages and finishes
// rollouts) and anything after them (a dashboard, webhooks). Each state
// move is one atomic operation of package store; control decides what to
// ask for and queues the tasks.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	ID      string             `json:"id"`
	Created bool               `json:"created"` // false: the rollout existed and was continued
	Queued  int                `json:"queued"`  // tasks newly queued by this call
	State   store.RolloutState `json:"state"`
	// RunOf is set when the file's rollout had completed and this apply
	// started a new run of it (ID is the run's id).
	RunOf string `json:"run_of,omitempty"`
	// Overlap counts the CVMs skipped because another active rollout
	// holds them (apply --allow-overlap), by that rollout.
	Overlap map[string]int `json:"overlap,omitempty"`
}

// ApplyOptions are apply's choices.
type ApplyOptions struct {
	// AllowOverlap skips CVMs another active rollout holds, instead of
	// refusing the rollout.
	AllowOverlap bool
}

// ErrEmpty: the selection matched no CVM; nothing is recorded.
var ErrEmpty = errors.New("the selector matches no CVM; nothing to record")

// Apply records the plan as a rollout and queues its first stage. Applying
// the same file again continues the same rollout while it is not finished
// (nothing is queued twice); once it has ended, see reapply.
func (c *Control) Apply(ctx context.Context, p *plan.Plan, who string, now time.Time, o ApplyOptions) (Applied, error) {
	return c.apply(ctx, p, who, now, o, true, "")
}

// apply is Apply; fromFile says p.ID is the id a file names (not a run of
// it), the only kind whose end reapply judges. lease is a run's
// reservation.
func (c *Control) apply(ctx context.Context, p *plan.Plan, who string, now time.Time, o ApplyOptions, fromFile bool, lease string) (Applied, error) {
	if len(p.Items) == 0 {
		return Applied{ID: p.ID}, fmt.Errorf("rollout %s: %w", p.ID, ErrEmpty)
	}
	if _, _, ended := p.File.Schedule.Gate(now); ended {
		// Nothing may start after end_at; an existing rollout is the
		// controller's to end, and reapply refuses new runs.
		if _, err := c.Store.Get(ctx, p.ID); errors.Is(err, store.ErrNotFound) {
			return Applied{ID: p.ID}, fmt.Errorf("rollout %s: schedule.end_at %s has passed; nothing would start", p.ID, p.File.Schedule.EndAt.Format(time.RFC3339))
		} else if err != nil {
			return Applied{}, err
		}
	}
	nr, err := newRollout(p, who, now, o, fromFile, lease)
	if err != nil {
		return Applied{}, err
	}
	if nr.Notify, err = c.notifyTargets(ctx, p.File); err != nil {
		return Applied{}, err
	}
	cr, err := c.Store.Create(ctx, nr, now)
	if err != nil {
		return Applied{ID: p.ID}, fmt.Errorf("recording rollout %s: %w", p.ID, err)
	}
	if !cr.New && fromFile {
		if a, done, err := c.reapply(ctx, p, who, now, o); done || err != nil {
			return a, err
		}
	}
	out := Applied{ID: p.ID, Created: cr.New, Overlap: cr.Overlap}
	r, err := c.Store.Get(ctx, p.ID)
	if err != nil {
		return out, err
	}
	out.State = r.State
	if r.State == store.RolloutRunning {
		out.Queued, err = c.dispatch(ctx, r, p.File, cr.New)
	}
	if err == nil && !cr.New && out.Queued > 0 {
		err = c.Store.Event(ctx, p.ID, now, who, fmt.Sprintf("applied again: %d tasks queued that were missing", out.Queued))
	}
	return out, err
}

// newRollout is the record apply asks the store to write for p.
func newRollout(p *plan.Plan, who string, now time.Time, o ApplyOptions, fromFile bool, lease string) (store.NewRollout, error) {
	spec, err := json.Marshal(p.File)
	if err != nil {
		return store.NewRollout{}, err
	}
	nr := store.NewRollout{ID: p.ID, Name: p.Name, Spec: string(spec), SpecHash: p.SpecHash, CreatedBy: who,
		State: store.RolloutRunning, RunOf: p.RunOf, RollbackOf: p.RollbackOf, AllowOverlap: o.AllowOverlap, Lease: lease}
	for _, st := range p.Stages {
		nr.Stages = append(nr.Stages, store.NewStage{Name: st.Name, Bake: st.Bake, Manual: st.Promote == "manual"})
	}
	if b := p.File.FailureBudget; b != nil {
		nr.Budget = &store.Budget{MinExecuted: b.MinExecuted, Action: store.RolloutState(b.TripState())}
		nr.BudgetMax = b.Limit
	}
	wait, why, _ := p.File.Schedule.Gate(now)
	if wait > 0 {
		nr.State, nr.Reason = store.RolloutScheduled, why
	}
	for _, it := range p.Items {
		c := store.NewCVM{ID: it.CVMID, Name: it.Name, Stage: -1, Reason: it.Reason}
		if it.Target != nil {
			b, _ := json.Marshal(it.Target)
			c.Target = string(b)
			nr.OwnTargets = true // a rollback: each CVM has its own
		}
		switch it.Action {
		case plan.Patch:
			c.State, c.Stage, c.Reason = store.Pending, it.Stage, ""
		case plan.Unchanged:
			c.State, c.Reason = store.Unchanged, "already at target at plan time"
		case plan.Unknown: // never queued
			c.State, c.Reason = store.Skipped, "config unreadable at plan time: "+it.ReadError()
		default:
			c.State = store.Skipped
		}
		nr.CVMs = append(nr.CVMs, c)
	}
	if p.Counts[plan.Patch] == 0 {
		// Nothing to patch: recorded as done, not as a rollout that runs.
		nr.State, nr.Reason = store.RolloutCompleted, "nothing to patch at plan time"
	}
	// Only the rollout the file names repeats, not its runs; it is marked
	// so with the rest of its record, in one step a crash cannot split.
	if s := p.File.Schedule; s != nil && s.Repeat > 0 && fromFile && p.RunOf == "" && p.RollbackOf == "" {
		nr.Repeat = true
	}
	nr.Event = fmt.Sprintf("applied (%s): %d to patch, %d unchanged, %d skipped; plan hash %s",
		nr.State, p.Counts[plan.Patch], p.Counts[plan.Unchanged], p.Counts[plan.Skip], p.Hash)
	return nr, nil
}

// notifyTargets are the notification targets of a rollout of f: the
// file's, then the workers' --notify-url if one is published (see
// store.NotifyDefaultKey) and the file does not list the same URL.
func (c *Control) notifyTargets(ctx context.Context, f *plan.File) ([]store.NotifyTarget, error) {
	var out []store.NotifyTarget
	for _, n := range f.Notify {
		out = append(out, store.NotifyTarget{URL: n.URL.V, Events: plan.Values(n.Events), Format: n.Format.V, SecretEnv: n.SecretEnv.V})
	}
	def, err := c.Store.NotifyDefault(ctx)
	if err != nil || def == nil {
		return out, err
	}
	for _, t := range out {
		if t.URL == def.URL {
			return out, nil
		}
	}
	return append(out, *def), nil
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
	return c.dispatch(ctx, r, spec, false)
}

// dispatch is Dispatch; fresh says r was just recorded by this call, so
// its stage's CVMs are all pending under generation 0 (no task of theirs
// was queued yet) and need not be read back one by one.
func (c *Control) dispatch(ctx context.Context, r *store.Rollout, spec *plan.File, fresh bool) (int, error) {
	ids, err := c.Store.StageMembers(ctx, r.ID, r.Stage)
	if err != nil {
		return 0, err
	}
	pending := map[int][]string{0: ids}
	if !fresh {
		if pending, err = c.Store.PendingByGen(ctx, r.ID, ids); err != nil {
			return 0, err
		}
	}
	n, err := c.enqueue(ctx, r.ID, spec, pending)
	if err != nil {
		return n, err
	}
	return n, c.Store.Dispatched(ctx, r.ID, r.Stage)
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

// reapply handles an apply of a file whose rollout exists and has ended.
// A re-run of apply must continue an unfinished rollout (crash safety), but
// must not silently do nothing on an ended one:
//   - cancelled: refused; cancel is final, a new rollout needs a new name;
//   - completed, and the fresh plan finds CVMs to patch (they drifted or
//     joined the selection since): the next run, as schedule.repeat starts
//     them (nextRun), unless end_at has passed;
//   - completed with nothing to patch: reported as is.
//
// done says whether it decided; otherwise Apply continues p.ID as usual.
func (c *Control) reapply(ctx context.Context, p *plan.Plan, who string, now time.Time, o ApplyOptions) (Applied, bool, error) {
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
		return Applied{ID: p.ID, State: r.State}, true, fmt.Errorf("rollout %s was cancelled%s; a cancelled rollout does not start again", p.ID, why)
	case r.State != store.RolloutCompleted || p.Counts[plan.Patch] == 0:
		return Applied{}, false, nil
	}
	if _, _, ended := p.File.Schedule.Gate(now); ended {
		return Applied{ID: p.ID, State: r.State}, true, fmt.Errorf("rollout %s: schedule.end_at %s has passed; no new run starts", p.ID, p.File.Schedule.EndAt.Format(time.RFC3339))
	}
	a, err := c.nextRun(ctx, p.ID, p, who, now, false, o)
	return a, true, err
}

// nextRun rolls p out as the next run of root ("<root>-run<N>", N >= 2),
// for re-apply and schedule.repeat (repeat = true) alike. The run number
// is reserved on the root (store.ReserveRun) before the run is recorded,
// under a lease that makes the run going at once; a crash in between
// leaves a reservation whose lease runs out, and the next call records
// that same run. If the latest run is still going, it is reported and
// nothing starts.
func (c *Control) nextRun(ctx context.Context, root string, p *plan.Plan, who string, now time.Time, repeat bool, o ApplyOptions) (Applied, error) {
	for range 3 { // a lost reservation race re-reads once or twice
		b, err := c.Store.Get(ctx, root)
		if err != nil {
			return Applied{}, err
		}
		n := max(b.Runs, 1)
		retake := false
		if n > 1 {
			latest, err := c.Store.Get(ctx, RunID(root, n))
			switch {
			case errors.Is(err, store.ErrNotFound):
				held, err := c.Store.Creating(ctx, RunID(root, n))
				if err != nil {
					return Applied{}, err
				}
				if held { // being recorded right now
					return Applied{ID: RunID(root, n), RunOf: root}, nil
				}
				retake = true // reserved, never recorded: record it now
			case err != nil:
				return Applied{}, err
			case !latest.State.Finished():
				return Applied{ID: latest.ID, State: latest.State, RunOf: root}, nil
			}
		}
		run := n + 1
		if retake {
			run = n
		}
		token, ok, err := c.Store.ReserveRun(ctx, root, n, RunID(root, run), repeat, retake)
		if err != nil {
			return Applied{ID: root, State: b.State}, err
		}
		if ok {
			return c.recordRun(ctx, root, run, p, who, now, token, o)
		}
	}
	return Applied{}, fmt.Errorf("rollout %s: another process keeps starting runs; try again", root)
}

// recordRun records and queues run n of root from p (left unchanged).
func (c *Control) recordRun(ctx context.Context, root string, n int, p *plan.Plan, who string, now time.Time, lease string, o ApplyOptions) (Applied, error) {
	run := *p
	run.ID, run.RunOf, run.Family = RunID(root, n), root, root
	a, err := c.apply(ctx, &run, who, now, o, false, lease)
	a.RunOf = root
	if err == nil && a.Created {
		err = c.Store.Event(ctx, root, now, who, fmt.Sprintf("run %d started as %s (%d to patch)", n, run.ID, run.Counts[plan.Patch]))
	}
	return a, err
}

// RunID names run n (n >= 2) of a repeating rollout; run 1 is the rollout itself.
func RunID(root string, n int) string { return store.RunID(root, n) }

// runOrBase is run n of root, where run 1 is root itself.
func runOrBase(root string, n int) string {
	if n > 1 {
		return RunID(root, n)
	}
	return root
}
