package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

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
	Owner string // unique per process: host/pid
	Log   *slog.Logger
}

// lockTTL is how long a controller that died blocks the others.
const lockTTL = 10 * time.Second

// Run ticks every interval until ctx ends.
func (c *Controller) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if ok, err := c.lead(ctx); err == nil && ok {
			if err := c.Tick(ctx, time.Now()); err != nil && ctx.Err() == nil {
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

// lead takes or renews the controller lock.
func (c *Controller) lead(ctx context.Context) (bool, error) {
	rdb := c.Store.Redis()
	ok, err := rdb.SetNX(ctx, store.ControllerLockKey, c.Owner, lockTTL).Result()
	if err != nil || ok {
		return ok, err
	}
	owner, err := rdb.Get(ctx, store.ControllerLockKey).Result()
	if err != nil {
		return false, err
	}
	if owner == c.Owner {
		return true, rdb.Expire(ctx, store.ControllerLockKey, lockTTL).Err()
	}
	return false, nil
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
	switch r.State {
	case store.RolloutCompleted:
		return c.Store.Finished(ctx, id)
	case store.RolloutCancelled:
		return c.finishCancel(ctx, r, now)
	case store.RolloutRunning:
		return c.advance(ctx, r, now)
	}
	return nil
}

// advance dispatches the current stage if it was not, moves to the next
// stage when the current one is done, and completes the rollout after the
// last.
func (c *Controller) advance(ctx context.Context, r *store.Rollout, now time.Time) error {
	spec, err := Spec(r)
	if err != nil {
		return err
	}
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
	if r.Stage+1 < len(r.Stages) {
		ok, err := c.stageGate(ctx, r, spec, now)
		if err != nil || !ok {
			return err
		}
		if err := c.Store.SetFields(ctx, r.ID, "stage", r.Stage+1, "stage_done_at", ""); err != nil {
			return err
		}
		r.Stage++
		_, err = c.Dispatch(ctx, r, spec)
		return err
	}
	if _, ok, err := c.Store.SetState(ctx, r.ID, store.RolloutCompleted, "", now, store.RolloutRunning); err != nil || !ok {
		return err
	}
	_ = c.Store.Event(ctx, r.ID, now, "controller", "completed")
	return c.Store.Finished(ctx, r.ID)
}

// finishCancel marks every CVM that did not start cancelled, then stops
// driving the rollout once no CVM is running.
func (c *Controller) finishCancel(ctx context.Context, r *store.Rollout, now time.Time) error {
	if r.Counts[store.Pending] > 0 {
		ids, err := c.Store.Redis().LRange(ctx, store.OrderKey(r.ID), 0, -1).Result()
		if err != nil {
			return err
		}
		pending, err := c.pendingOnly(ctx, r.ID, ids)
		if err != nil {
			return err
		}
		for _, cvm := range pending {
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

var _ = redis.Nil
