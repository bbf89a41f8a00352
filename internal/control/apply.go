// Package control records rollouts and drives them: apply, the controller
// loop that dispatches stages and finishes rollouts, and the operator's
// commands (pause, resume, cancel, promote, retry).
package control

import (
	"context"
	"encoding/json"
	"errors"
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
// the same file again continues the same rollout while it is not finished
// (nothing is queued twice); once it has ended, see reapply.
func (c *Control) Apply(ctx context.Context, p *plan.Plan, who string, now time.Time) (Applied, error) {
	return c.apply(ctx, p, who, now, true)
}

// apply is Apply; fromFile says p.ID is the id a file names (not a run of
// it), the only kind whose end reapply judges.
func (c *Control) apply(ctx context.Context, p *plan.Plan, who string, now time.Time, fromFile bool) (Applied, error) {
	if _, _, ended := p.File.Schedule.Gate(now); ended {
		// Nothing may start after end_at; an existing rollout is the
		// controller's to end, and reapply refuses new runs.
		if _, err := c.Store.Get(ctx, p.ID); errors.Is(err, store.ErrNotFound) {
			return Applied{ID: p.ID}, fmt.Errorf("rollout %s: schedule.end_at %s has passed; nothing would start", p.ID, p.File.Schedule.EndAt.Format(time.RFC3339))
		} else if err != nil {
			return Applied{}, err
		}
	}
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
	if p.RollbackOf != "" {
		nr.Fields["rollback_of"] = p.RollbackOf
	}
	if p.RunOf != "" {
		nr.Fields["run_of"] = p.RunOf
	}
	if p.Family != "" {
		nr.Fields["family"] = p.Family
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
			nr.Fields["own_targets"] = "1" // a rollback: each CVM has its own
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
	// Only the rollout the file names repeats, not its runs; it is marked
	// so with the rest of its record, in one step a crash cannot split.
	if s := p.File.Schedule; s != nil && s.Repeat > 0 && fromFile && p.RunOf == "" && p.RollbackOf == "" {
		nr.Repeat = true
	}
	created, err := c.Store.Create(ctx, nr, now)
	if err != nil {
		return Applied{}, fmt.Errorf("recording rollout %s: %w", p.ID, err)
	}
	if !created && fromFile {
		if a, done, err := c.reapply(ctx, p, who, now); done || err != nil {
			return a, err
		}
	}
	out := Applied{ID: p.ID, Created: created}
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
//     joined the selection since): the next run, as schedule.repeat starts
//     them (nextRun), unless end_at has passed;
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
		return Applied{ID: p.ID, State: r.State}, true, fmt.Errorf("rollout %s was cancelled%s; a cancelled rollout does not start again", p.ID, why)
	case r.State != store.RolloutCompleted || p.Counts[plan.Patch] == 0:
		return Applied{}, false, nil
	}
	if _, _, ended := p.File.Schedule.Gate(now); ended {
		return Applied{ID: p.ID, State: r.State}, true, fmt.Errorf("rollout %s: schedule.end_at %s has passed; no new run starts", p.ID, p.File.Schedule.EndAt.Format(time.RFC3339))
	}
	a, err := c.nextRun(ctx, p.ID, p, who, now, false)
	return a, true, err
}

// reserveRunScript claims run number ARGV[1]+1 of a base rollout if its
// latest run is still ARGV[1], so that of two processes starting the next
// run (operators re-applying, the repeat controller) exactly one creates
// it; and only while the base is completed (not retried back to running,
// not cancelled), its rollback is not going, and, for the repeat
// controller (ARGV[3] = 1), the base still repeats (a cancel during the
// re-plan wins).
// KEYS[1] base hash, KEYS[2] the base's rollback hash, KEYS[3] the
// repeating set, KEYS[4] the latest run's rollback hash, KEYS[5] and
// KEYS[6] the creation leases of those two rollbacks. ARGV[1] runs
// seen, ARGV[2] the new run's id, ARGV[3] 1 to require repeating, ARGV[4]
// the base's id, ARGV[5] 1 to check only (for a reserved, unrecorded run).
// Returns 1 reserved, 0 the runs moved on (re-read), or the reason why not.
var reserveRunScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'completed' then return 'rollout is ' .. (st or 'gone') end
for _, k in ipairs({KEYS[2], KEYS[4]}) do
  local rb = redis.call('HMGET', k, 'state', 'ready')
  if rb[2] == '1' and rb[1] ~= 'completed' and rb[1] ~= 'cancelled' then return 'a rollback is ' .. rb[1] end
end
if redis.call('EXISTS', KEYS[5], KEYS[6]) > 0 then return 'a rollback is being recorded' end
if ARGV[3] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 0 then
  return 'it no longer repeats'
end
local n = tonumber(redis.call('HGET', KEYS[1], 'runs') or '1')
if n ~= tonumber(ARGV[1]) then return 0 end
if ARGV[5] == '1' then return 1 end -- check only: run n is reserved, not recorded
redis.call('HSET', KEYS[1], 'runs', n + 1, 'latest_run', ARGV[2])
return 1
`)

// nextRun rolls p out as the next run of base ("<base>-run<N>", N >= 2),
// for re-apply and schedule.repeat (repeat = true) alike. The run number
// is reserved on the base before the run is recorded, so a crash in
// between leaves a reserved run that the next call records (under the same
// id) instead of skipping it, and two callers never record two runs. If
// the latest run is still going, it is reported and nothing starts.
func (c *Control) nextRun(ctx context.Context, base string, p *plan.Plan, who string, now time.Time, repeat bool) (Applied, error) {
	for range 3 { // a lost reservation race re-reads once or twice
		b, err := c.Store.Get(ctx, base)
		if err != nil {
			return Applied{}, err
		}
		n := max(atoi(b.Fields["runs"]), 1)
		latestID := runOrBase(base, n)
		checkOnly := false
		if n > 1 {
			latest, err := c.Store.Get(ctx, latestID)
			switch {
			case errors.Is(err, store.ErrNotFound):
				// Reserved, never recorded: record it if still allowed,
				// judging the rollback of the run before it.
				checkOnly, latestID = true, runOrBase(base, n-1)
			case err != nil:
				return Applied{}, err
			case !finished(latest.State):
				return Applied{ID: latest.ID, State: latest.State, RunOf: base}, nil
			}
		}
		res, err := reserveRunScript.Run(ctx, c.Store.Redis(),
			[]string{store.RolloutKey(base), store.RolloutKey(RollbackID(base)), store.RepeatingKey, store.RolloutKey(RollbackID(latestID)),
				store.CreatingKey(RollbackID(base)), store.CreatingKey(RollbackID(latestID))},
			n, RunID(base, n+1), btoi(repeat), base, btoi(checkOnly)).Result()
		if err != nil {
			return Applied{}, err
		}
		switch v := res.(type) {
		case int64:
			if v == 1 && checkOnly {
				return c.recordRun(ctx, base, n, p, who, now)
			}
			if v == 1 {
				return c.recordRun(ctx, base, n+1, p, who, now)
			}
		case string:
			return Applied{ID: base, State: b.State}, fmt.Errorf("rollout %s: %w: %s", base, errNoRun, v)
		}
	}
	return Applied{}, fmt.Errorf("rollout %s: another process keeps starting runs; try again", base)
}

// errNoRun: the base's state forbids a new run (see reserveRunScript).
var errNoRun = errors.New("no new run starts")

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// recordRun records and queues run n of base from p (left unchanged).
func (c *Control) recordRun(ctx context.Context, base string, n int, p *plan.Plan, who string, now time.Time) (Applied, error) {
	run := *p
	run.ID, run.RunOf = RunID(base, n), base
	if run.Family == "" {
		run.Family = base
	}
	a, err := c.apply(ctx, &run, who, now, false)
	a.RunOf = base
	if err == nil && a.Created {
		_ = c.Store.Event(ctx, base, now, who, fmt.Sprintf("run %d started as %s (%d to patch)", n, run.ID, run.Counts[plan.Patch]))
	}
	return a, err
}
