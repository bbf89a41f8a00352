package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"golang.org/x/sync/errgroup"
)

// ConfigReader reads a CVM's current network config.
type ConfigReader interface {
	GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error)
}

// RollbackID names the first rollback of a rollout.
func RollbackID(id string) string { return store.RollbackID(id, 1) }

// rollbackWait bounds how long a rollback waits for the CVMs still in
// flight of the rollout it cancelled to settle.
const rollbackWait = 45 * time.Second

// ApplyRollback records and queues a rollback plan (from PlanRollback). It
// cancels the rollout it undoes if that is paused (a rollback replaces
// it, and the two never work the same CVMs at once), and once the rollback
// is recorded it stops the family's schedule.repeat (a later run would see
// the restored CVMs as drift and patch them back; while the rollback is
// going, no run starts anyway). A refused rollback stops nothing.
func (c *Control) ApplyRollback(ctx context.Context, p *plan.Plan, of, who string, now time.Time) (Applied, error) {
	root := store.Family(of)
	orig, err := c.Store.Get(ctx, of)
	if err != nil {
		return Applied{}, err
	}
	if err := c.watched(ctx, "rollback", orig); err != nil {
		return Applied{}, err
	}
	if existing, err := c.Store.Get(ctx, p.ID); err == nil && existing.State == store.RolloutCancelled {
		return Applied{ID: p.ID, State: existing.State}, fmt.Errorf("rollback: %s was cancelled and does not start again; run `rollout rollback %s` again to record the next rollback over the CVMs still not restored", p.ID, of)
	}
	if orig.State == store.RolloutPaused {
		if _, err := c.Cancel(ctx, of, who, "rolled back as "+p.ID, now); err != nil {
			return Applied{}, err
		}
	}
	// Not Apply: a rollback gets no runs (retry --failed redoes one). The
	// creation refuses while the cancelled original still has CVMs in
	// flight; they settle within a try.
	for deadline := time.Now().Add(rollbackWait); ; {
		a, err := c.apply(ctx, p, who, now, ApplyOptions{}, false, "")
		var be *store.BusyError
		if !errors.As(err, &be) || be.Other != of || time.Now().After(deadline) {
			if err == nil && a.Created {
				err = c.Store.Event(ctx, of, now, who, fmt.Sprintf("rollback recorded as %s (%d CVMs to restore)", a.ID, p.Counts[plan.Patch]))
			}
			if err == nil {
				_, err = c.Store.StopRepeats(ctx, root, who, "repeats stopped by the rollback of "+of, now)
			}
			return a, err
		}
		select {
		case <-ctx.Done():
			return Applied{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// rollbackFor picks the id of the rollback of orig to plan: its latest
// rollback while that is still going (or was never recorded: a crash),
// else the next one. A cancelled or completed rollback is not continued;
// the next one covers the CVMs still not restored.
func (c *Control) rollbackFor(ctx context.Context, orig *store.Rollout) (string, error) {
	latest := orig.LatestRollback
	if latest == "" {
		return RollbackID(orig.ID), nil
	}
	lr, err := c.Store.Get(ctx, latest)
	if errors.Is(err, store.ErrNotFound) {
		return latest, nil
	} else if err != nil {
		return "", err
	}
	if !lr.State.Finished() {
		return latest, nil
	}
	n, _ := strconv.Atoi(strings.TrimPrefix(latest, orig.ID+"-rollback"))
	return store.RollbackID(orig.ID, max(n, 1)+1), nil
}

// PlanRollback plans the exact undo of a rollout: every CVM it changed gets
// its own before-image back, through the same stages, limits and retry
// policy. A CVM is left alone (skip) if it was not changed, has no
// before-image, or was changed again since (its config is no longer what
// the rollout applied): rollback never overwrites someone else's change. A
// CVM already at its before-image (restored by an earlier, cancelled
// rollback) is unchanged, so the next rollback finishes the undo.
func (c *Control) PlanRollback(ctx context.Context, r ConfigReader, id string) (*plan.Plan, error) {
	orig, err := c.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if orig.State == store.RolloutRunning || orig.State == store.RolloutScheduled {
		return nil, fmt.Errorf("rollback: rollout %s is %s; pause or cancel it first", id, orig.State)
	}
	if orig.RollbackOf != "" {
		return nil, fmt.Errorf("rollback: %s is itself a rollback; to roll forward again, apply the file", id)
	}
	rb, err := c.rollbackFor(ctx, orig)
	if err != nil {
		return nil, err
	}
	// Another member going refuses, except the rollback being continued
	// and a paused original (ApplyRollback cancels it).
	if other, err := c.Store.Busy(ctx, rb); err != nil {
		return nil, err
	} else if other != "" && other != id && other != rb {
		return nil, &store.BusyError{Op: "rollback", ID: id, Other: other}
	}
	if err := c.watched(ctx, "rollback", orig); err != nil {
		return nil, err
	}
	spec, err := Spec(orig)
	if err != nil {
		return nil, err
	}
	spec.Schedule = nil // undo now, not at the original's times
	p := &plan.Plan{ID: rb, Name: spec.Name, SpecHash: orig.SpecHash, File: spec, RollbackOf: id, Family: orig.Family}
	var recs []store.CVMRecord
	if err := c.Store.Records(ctx, id, func(rec store.CVMRecord) error {
		if rec.Patched || rec.PatchSent {
			recs = append(recs, rec) // a PATCH sent by a try that died may have landed
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("rollback: rollout %s patched no CVM; there is nothing to roll back", id)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].CVMID < recs[j].CVMID })
	p.Items = make([]plan.Item, len(recs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(plan.DefaultReadConcurrency)
	for i, rec := range recs {
		it := &p.Items[i]
		*it = plan.Item{CVMID: rec.CVMID, Name: rec.Name, Action: plan.Patch}
		t := plan.TargetOf(rec.PrevKMS, rec.PrevGW, spec.Target.Restart)
		it.Target = &t
		appliedKMS, appliedGW := rec.AppliedKMS, rec.AppliedGW
		if !rec.Patched { // its try died after the PATCH: what landed, if anything, is the target
			appliedKMS, appliedGW = spec.Target.KMS(), spec.Target.Gateway()
		}
		g.Go(func() error {
			cur, err := r.GetNetworkConfig(gctx, rec.CVMID)
			switch {
			case api.StatusOf(err) == 404:
				it.Action, it.Reason = plan.Skip, "CVM not found"
			case err != nil:
				return fmt.Errorf("reading %s: %w", rec.CVMID, err)
			default:
				it.KMS, it.Gateway = cur.KMSURLs, cur.GatewayURLs
				switch {
				case t.Reached(cur):
					it.Action, it.Reason = plan.Unchanged, "already at its before-image"
				case rec.PrevKMS == nil && rec.PrevGW == nil:
					it.Action, it.Reason = plan.Skip, "no before-image recorded"
				case !matches(appliedKMS, cur.KMSURLs, spec.Target.KMS()) || !matches(appliedGW, cur.GatewayURLs, spec.Target.Gateway()):
					it.Action, it.Reason = plan.Skip, "changed since the rollout; left alone"
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	p.Finish()
	return p, nil
}

// matches reports whether the current list is what the rollout applied
// (a list the file did not set is not compared).
func matches(applied, cur, target []string) bool {
	if target == nil {
		return true
	}
	return slices.Equal(applied, cur)
}
