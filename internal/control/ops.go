package control

import (
	"context"
	"errors"
	"time"

	"github.com/phalafleet/rollout/internal/store"
)

// Changed is what an operator's state command did: the state it found and
// the state it left (equal when there was nothing to do).
type Changed struct {
	ID   string             `json:"id"`
	From store.RolloutState `json:"from"`
	To   store.RolloutState `json:"to"`
	// RepeatsStopped: cancel also ended schedule.repeat.
	RepeatsStopped bool `json:"repeats_stopped,omitempty"`
}

// Pause stops a running or scheduled rollout from starting CVMs (those in
// flight finish). Pausing a paused rollout is not an error.
func (c *Control) Pause(ctx context.Context, id, who, reason string, now time.Time) (Changed, error) {
	from, err := c.Store.Pause(ctx, id, who, reason, now)
	return asChanged(id, from, store.RolloutPaused, err)
}

// Resume continues a paused rollout; maxFailed >= 0 raises its failure
// budget to that many failures in the same step. Resuming a running
// rollout is not an error.
func (c *Control) Resume(ctx context.Context, id, who string, maxFailed int, now time.Time) (Changed, error) {
	from, err := c.Store.Resume(ctx, id, who, maxFailed, now)
	return asChanged(id, from, store.RolloutRunning, err)
}

// Cancel ends a rollout (CVMs not started become cancelled) and stops its
// repeats; for a completed repeating rollout, stopping the repeats is all
// it does.
func (c *Control) Cancel(ctx context.Context, id, who, reason string, now time.Time) (Changed, error) {
	from, stopped, err := c.Store.Cancel(ctx, id, who, reason, now)
	ch, err := asChanged(id, from, store.RolloutCancelled, err)
	if err == nil && from == store.RolloutCompleted {
		ch.To = from // only the repeats stopped
	}
	ch.RepeatsStopped = stopped
	return ch, err
}

// asChanged turns a refusal to move to a state the rollout is in already
// into "nothing to do".
func asChanged(id string, from, to store.RolloutState, err error) (Changed, error) {
	var ne *store.NotAllowedError
	switch {
	case err == nil:
		return Changed{ID: id, From: from, To: to}, nil
	case errors.As(err, &ne) && ne.Why == "" && ne.State == to:
		return Changed{ID: id, From: from, To: from}, nil
	}
	return Changed{ID: id, From: from, To: from}, err
}
