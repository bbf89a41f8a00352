package control

import (
	"context"
	"errors"
	"fmt"
	"github.com/phalafleet/rollout/internal/api"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
)

// Controller drives every active rollout forward: it dispatches the next
// stage when the current one is done, finishes completed rollouts, and
// marks the untouched CVMs of a cancelled rollout. Every worker runs one;
// a Redis lock lets one act at a time, so progression needs no CLI running
// and survives any process dying.
type Controller struct {
	*Control
	Owner  string // unique per process: host/pid
	Log    *slog.Logger
	Reaper SlotReaper // returns in-flight slots of dead workers; may be nil
	// Planner re-plans repeating rollouts (schedule.repeat); may be nil.
	Planner plan.Reader
	// PlanPace, when set, paces a re-plan of rollout id (ratelimit's
	// PlanPacer: the budget the workers spend from).
	PlanPace func(id string, f *plan.File) api.Pacer
	// StallAfter: a running rollout whose stage has CVMs left and that has
	// not moved for this long is reported stalled (0: DefaultStallAfter;
	// negative: never).
	StallAfter time.Duration
	// OnLead, if set, runs after each tick of the lock holder: fleet-wide
	// housekeeping that one process does (retention, the Redis memory check).
	OnLead func(ctx context.Context, now time.Time)
}

// SlotReaper returns in-flight slots whose holders died.
type SlotReaper interface {
	Reap(ctx context.Context, rollout string) (int, error)
}

// lockTTL is how long a controller that died blocks the others.
const lockTTL = 10 * time.Second

// Run ticks every interval until ctx ends.
func (c *Controller) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if ok, err := c.Store.Lead(ctx, c.Owner, lockTTL); err == nil && ok {
			if err := c.leadingTick(ctx); err != nil && ctx.Err() == nil {
				c.log().Warn("controller tick", "err", store.Full(err))
			}
		}
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = c.Store.Unlead(rctx, c.Owner)
			cancel()
			return
		case <-t.C:
		}
	}
}

// leadingTick runs one Tick while renewing the lock, and stops the tick
// if the lock is lost: a tick can outlast lockTTL (re-planning a repeat
// reads the whole fleet), and another process must not lead meanwhile.
func (c *Controller) leadingTick(ctx context.Context) error {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait() // no renewal may land after this tick (and a release)
	defer close(done)
	wg.Go(func() {
		t := time.NewTicker(lockTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if ok, err := c.Store.Lead(tctx, c.Owner, lockTTL); err != nil || !ok {
					cancel()
					return
				}
			}
		}
	})
	err := c.Tick(tctx, time.Now())
	if c.OnLead != nil && tctx.Err() == nil {
		c.OnLead(tctx, time.Now()) // under the same renewal: stops if the lock is lost
	}
	return err
}

// Tick drives each active rollout one step at time now.
func (c *Controller) Tick(ctx context.Context, now time.Time) error {
	ids, err := c.Store.Active(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if err := c.Step(ctx, id, now); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
		}
	}
	repeating, err := c.Store.Repeating(ctx)
	if err != nil {
		return err
	}
	for _, id := range repeating {
		if err := c.repeatStep(ctx, id, now); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// Step moves one rollout forward if it can.
func (c *Controller) Step(ctx context.Context, id string, now time.Time) error {
	r, err := c.Store.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		_, err := c.Store.Settle(ctx, id) // an apply that died before ready
		return err
	} else if err != nil {
		return err
	}
	// Return the in-flight slots of dead workers first, whatever the state:
	// a cancelled rollout's last running CVM may need one to settle. (A
	// rollout without max_in_flight has no slots; the call is a no-op.)
	if c.Reaper != nil {
		if _, err := c.Reaper.Reap(ctx, r.ID); err != nil {
			return err
		}
	}
	switch r.State {
	case store.RolloutCompleted:
		_, err := c.Store.Settle(ctx, id)
		return err
	case store.RolloutCancelled:
		return c.finishCancel(ctx, r, now)
	}
	spec, err := Spec(r)
	if err != nil {
		return err
	}
	if moved, err := c.schedule(ctx, r, spec, now); err != nil || moved {
		return err
	}
	if r.Gen > r.Requeued {
		// A retry --failed whose process died before it queued what it reset.
		if _, err := c.requeue(ctx, r.ID, spec); err != nil {
			return err
		}
	}
	if r.State == store.RolloutRunning {
		return c.advance(ctx, r, spec, now)
	}
	return nil
}

// moved reports whether a store move went ahead: a refusal (the state
// moved on meanwhile) is not an error for the controller.
func moved(err error) (bool, error) {
	if errors.Is(err, store.ErrNotAllowed) {
		return false, nil
	}
	return err == nil, err
}

// schedule moves a rollout between scheduled and running as its start time
// and maintenance windows say, and ends it after end_at. It reports
// whether it changed the state.
func (c *Controller) schedule(ctx context.Context, r *store.Rollout, spec *plan.File, now time.Time) (bool, error) {
	wait, why, ended := spec.Schedule.Gate(now)
	switch {
	case ended && !r.Ended:
		// Once: an operator who resumes after end_at means it.
		to := store.RolloutCancelled
		if spec.Schedule.EndAction == "pause" {
			to = store.RolloutPaused
		}
		return moved(c.Store.End(ctx, r.ID, to, why, now))
	case ended || r.State == store.RolloutPaused:
		return false, nil
	case wait > 0 && r.State == store.RolloutRunning:
		return moved(c.Store.Close(ctx, r.ID, why, now))
	case wait > 0:
		if r.Reason != why {
			return false, c.Store.SetReason(ctx, r.ID, r.State, why, now)
		}
		return false, nil
	case r.State == store.RolloutScheduled:
		return moved(c.Store.Open(ctx, r.ID, now))
	}
	return false, nil
}

// advance dispatches the current stage if it was not, moves to the next
// stage once the current one is done, baked and (if manual) promoted, and
// completes the rollout when no CVM is left to do.
func (c *Controller) advance(ctx context.Context, r *store.Rollout, spec *plan.File, now time.Time) error {
	if r.Dispatched < r.Stage {
		_, err := c.Dispatch(ctx, r, spec)
		return err
	}
	if len(r.Stages) == 0 {
		return nil
	}
	if r.Stages[r.Stage].Left() > 0 {
		return c.stalled(ctx, r, now)
	}
	if r.Stages[r.Stage].DoneAt.IsZero() {
		// Recorded for every stage (the last, a manual one too): its
		// stage_completed notification goes with it.
		t, err := c.Store.StageDone(ctx, r.ID, r.Stage, now)
		if err != nil {
			return err
		}
		r.Stages[r.Stage].DoneAt = t
	}
	if r.Stage+1 >= len(r.Stages) {
		if r.Counts[store.Pending]+r.Counts[store.Running] > 0 {
			return nil // retry --failed put CVMs of earlier stages back
		}
		if ok, err := moved(c.Store.Complete(ctx, r.ID, now)); err != nil || !ok {
			return err
		}
		_, err := c.Store.Settle(ctx, r.ID)
		return err
	}
	ok, why, err := c.stageGate(ctx, r, now)
	if err != nil {
		return err
	}
	if !ok {
		if r.Reason != why {
			return c.Store.SetReason(ctx, r.ID, store.RolloutRunning, why, now)
		}
		return nil
	}
	next := r.Stage + 1
	if ok, err := moved(c.Store.Advance(ctx, r.ID, r.Stage, r.Stages[next].Name, now)); err != nil || !ok {
		return err
	}
	r.Stage = next
	_, err = c.Dispatch(ctx, r, spec)
	return err
}

// DefaultStallAfter is how long a running rollout with CVMs left in its
// stage may go without any progress before it is reported stalled.
const DefaultStallAfter = 15 * time.Minute

// stalled reports, once per stall, a running rollout whose current stage
// has CVMs left but whose record has not moved for StallAfter (a bake or
// a manual gate is waiting on purpose, not a stall).
func (c *Controller) stalled(ctx context.Context, r *store.Rollout, now time.Time) error {
	after := c.StallAfter
	if after == 0 {
		after = DefaultStallAfter
	}
	if after < 0 || now.Sub(r.UpdatedAt) < after {
		return nil
	}
	why := fmt.Sprintf("stalled: no CVM of stage %d moved for %s (%d still to do)", r.Stage+1,
		now.Sub(r.UpdatedAt).Truncate(time.Second), r.Stages[r.Stage].Left())
	_, err := c.Store.Stalled(ctx, r.ID, r.UpdatedAt, why, now)
	return err
}

// finishCancel marks every CVM that did not start cancelled, then stops
// driving the rollout once no CVM is running.
func (c *Controller) finishCancel(ctx context.Context, r *store.Rollout, now time.Time) error {
	if r.Counts[store.Pending] > 0 {
		ids, err := c.Store.CVMIDs(ctx, r.ID)
		if err != nil {
			return err
		}
		byGen, err := c.Store.PendingByGen(ctx, r.ID, ids)
		if err != nil {
			return err
		}
		for _, cvm := range slices.Concat(slices.Collect(maps.Values(byGen))...) {
			if _, err := c.Store.Move(ctx, r.ID, cvm, store.Cancelled, store.ModeCancel, now,
				"reason", "rollout cancelled before this CVM started", "finished_at", now.UTC().Format(time.RFC3339Nano)); err != nil {
				return err
			}
		}
		return nil
	}
	_, err := c.Store.Settle(ctx, r.ID)
	return err
}

func (c *Controller) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.Default()
}
