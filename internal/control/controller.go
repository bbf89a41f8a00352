package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/redis/go-redis/v9"
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
		if ok, err := c.lead(ctx); err == nil && ok {
			if err := c.leadingTick(ctx); err != nil && ctx.Err() == nil {
				c.log().Warn("controller tick", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			c.release()
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
				if ok, err := c.lead(tctx); err != nil || !ok {
					cancel()
					return
				}
			}
		}
	})
	return c.Tick(tctx, time.Now())
}

// leadScript takes the controller lock, or renews it if this process holds
// it, atomically. KEYS[1] lock; ARGV owner, ttl (ms). Returns 1 if held.
var leadScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// lead takes or renews the controller lock.
func (c *Controller) lead(ctx context.Context) (bool, error) {
	n, err := leadScript.Run(ctx, c.Store.Redis(), []string{store.ControllerLockKey}, c.Owner, lockTTL.Milliseconds()).Int()
	return n == 1, err
}

func (c *Controller) release() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	rdb := c.Store.Redis()
	if owner, _ := rdb.Get(ctx, store.ControllerLockKey).Result(); owner == c.Owner {
		rdb.Del(ctx, store.ControllerLockKey)
	}
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
		return c.Store.Finished(ctx, id)
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
		return c.Store.Finished(ctx, id)
	case store.RolloutCancelled:
		return c.finishCancel(ctx, r, now)
	}
	spec, err := Spec(r)
	if err != nil {
		return err
	}
	switch r.State {
	case store.RolloutScheduled, store.RolloutRunning, store.RolloutPaused:
		if moved, err := c.schedule(ctx, r, spec, now); err != nil || moved {
			return err
		}
		if r.State == store.RolloutRunning {
			return c.advance(ctx, r, spec, now)
		}
	}
	return nil
}

// schedule moves a rollout between scheduled and running as its start time
// and maintenance windows say, and ends it after end_at. It reports
// whether it changed the state.
func (c *Controller) schedule(ctx context.Context, r *store.Rollout, spec *plan.File, now time.Time) (bool, error) {
	wait, why, ended := spec.Schedule.Gate(now)
	switch {
	case ended && r.Fields["ended"] != "1":
		// Once: an operator who resumes after end_at means it.
		to := store.RolloutCancelled
		if spec.Schedule.EndAction == "pause" {
			to = store.RolloutPaused
		}
		_, ok, err := c.Store.SetState(ctx, r.ID, to, why, now, store.RolloutScheduled, store.RolloutRunning, store.RolloutPaused)
		if err == nil {
			err = c.Store.SetFields(ctx, r.ID, "ended", "1")
		}
		if ok {
			_ = c.Store.Event(ctx, r.ID, now, "controller", why)
		}
		return ok, err
	case ended || r.State == store.RolloutPaused:
		return false, nil
	case wait > 0 && r.State == store.RolloutRunning:
		_, ok, err := c.Store.SetState(ctx, r.ID, store.RolloutScheduled, why, now, store.RolloutRunning)
		if ok {
			_ = c.Store.Event(ctx, r.ID, now, "controller", "stopped dispatching: "+why)
		}
		return ok, err
	case wait > 0:
		if r.Reason != why {
			return false, c.Store.SetFields(ctx, r.ID, "reason", why)
		}
		return false, nil
	case r.State == store.RolloutScheduled:
		_, ok, err := c.Store.SetState(ctx, r.ID, store.RolloutRunning, "", now, store.RolloutScheduled)
		if ok {
			_ = c.Store.Event(ctx, r.ID, now, "controller", "started dispatching (schedule allows it)")
		}
		return ok, err
	}
	return false, nil
}

// advance dispatches the current stage if it was not, moves to the next
// stage once the current one is done, baked and (if manual) promoted, and
// completes the rollout when no CVM is left to do.
func (c *Controller) advance(ctx context.Context, r *store.Rollout, spec *plan.File, now time.Time) error {
	dispatched, _ := strconv.Atoi(r.Fields["dispatched"])
	if dispatched < r.Stage {
		_, err := c.Dispatch(ctx, r, spec)
		return err
	}
	if len(r.Stages) == 0 {
		return nil
	}
	st := r.Stages[r.Stage]
	if st.Counts[store.Pending]+st.Counts[store.Running] > 0 {
		return nil
	}
	if r.Stage+1 >= len(r.Stages) {
		if r.Counts[store.Pending]+r.Counts[store.Running] > 0 {
			return nil // retry --failed put CVMs of earlier stages back
		}
		if _, ok, err := c.Store.SetState(ctx, r.ID, store.RolloutCompleted, "", now, store.RolloutRunning); err != nil || !ok {
			return err
		}
		_ = c.Store.Event(ctx, r.ID, now, "controller", "completed")
		return c.Store.Finished(ctx, r.ID)
	}
	ok, why, err := c.stageGate(ctx, r, now)
	if err != nil {
		return err
	}
	if !ok {
		if r.Reason != why {
			return c.Store.SetFields(ctx, r.ID, "reason", why)
		}
		return nil
	}
	next := r.Stage + 1
	if err := c.Store.SetFields(ctx, r.ID, "stage", next, "reason", ""); err != nil {
		return err
	}
	_ = c.Store.Event(ctx, r.ID, now, "controller", fmt.Sprintf("stage %d (%s) started", next+1, r.Stages[next].Name))
	r.Stage = next
	_, err = c.Dispatch(ctx, r, spec)
	return err
}

// finishCancel marks every CVM that did not start cancelled, then stops
// driving the rollout once no CVM is running.
func (c *Controller) finishCancel(ctx context.Context, r *store.Rollout, now time.Time) error {
	if r.Counts[store.Pending] > 0 {
		ids, err := c.Store.Redis().LRange(ctx, store.OrderKey(r.ID), 0, -1).Result()
		if err != nil {
			return err
		}
		byGen, err := c.pendingOnly(ctx, r.ID, ids)
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
	if r.Counts[store.Running] == 0 {
		return c.Store.Finished(ctx, r.ID)
	}
	return nil
}

func (c *Controller) log() *slog.Logger {
	if c.Log != nil {
		return c.Log
	}
	return slog.Default()
}
