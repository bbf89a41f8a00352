package control

import (
	"context"
	"fmt"
	"slices"
	"sort"
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

// ApplyRollback records and queues a rollback plan. It also stops the
// original's schedule.repeat: a later run would see the restored CVMs as
// drift and patch them back.
func (c *Control) ApplyRollback(ctx context.Context, p *plan.Plan, of, who string, now time.Time) (Applied, error) {
	// Repeats stop first, and the family is checked again: planning read
	// the fleet and maybe waited for a yes, and a run may have started.
	root := p.Family
	if root == "" {
		root = of
	}
	if stopped, err := c.Store.StopRepeating(ctx, root); err != nil {
		return Applied{}, err
	} else if stopped {
		_ = c.Store.Event(ctx, root, now, who, "repeats stopped by the rollback of "+of)
	}
	orig, err := c.Store.Get(ctx, of)
	if err != nil {
		return Applied{}, err
	}
	if err := c.watched(ctx, "rollback", orig); err != nil {
		return Applied{}, err
	}
	if other, err := c.busy(ctx, root, of); err != nil {
		return Applied{}, err
	} else if other != "" && other != p.ID {
		return Applied{}, busyError("rollback", of, other)
	}
	// Not Apply: a rollback gets no runs (retry --failed redoes one).
	a, err := c.apply(ctx, p, who, now, false)
	if err != nil {
		return a, err
	}
	if a.Created {
		_ = c.Store.Event(ctx, of, now, who, fmt.Sprintf("rollback recorded as %s (%d CVMs to restore)", a.ID, p.Counts[plan.Patch]))
	}
	return a, nil
}

// RollbackID names the rollback of a rollout.
func RollbackID(id string) string { return id + "-rollback" }

// PlanRollback plans the exact undo of a rollout: every CVM it changed gets
// its own before-image back, through the same stages, limits and retry
// policy. A CVM is left alone (skip) if it was not changed, has no
// before-image, or was changed again since (its config is no longer what
// the rollout applied): rollback never overwrites someone else's change.
func (c *Control) PlanRollback(ctx context.Context, r ConfigReader, id string) (*plan.Plan, error) {
	orig, err := c.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if orig.State == store.RolloutRunning || orig.State == store.RolloutScheduled {
		return nil, fmt.Errorf("rollback: rollout %s is %s; pause or cancel it first", id, orig.State)
	}
	if orig.Fields["rollback_of"] != "" {
		return nil, fmt.Errorf("rollback: %s is itself a rollback; to roll forward again, apply the file", id)
	}
	if err := c.watched(ctx, "rollback", orig); err != nil {
		return nil, err
	}
	if other, err := c.busy(ctx, baseOf(orig), id); err != nil {
		return nil, err
	} else if other != "" && other != RollbackID(id) {
		return nil, busyError("rollback", id, other)
	}
	spec, err := Spec(orig)
	if err != nil {
		return nil, err
	}
	spec.Schedule = nil // undo now, not at the original's times
	p := &plan.Plan{ID: RollbackID(id), Name: spec.Name, SpecHash: orig.SpecHash, File: spec, RollbackOf: id, Family: baseOf(orig)}
	var recs []store.CVMRecord
	if err := c.Store.Records(ctx, id, func(rec store.CVMRecord) error {
		if rec.Patched {
			recs = append(recs, rec)
		}
		return nil
	}); err != nil {
		return nil, err
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
				case !matches(rec.AppliedKMS, cur.KMSURLs, spec.Target.KMS()) || !matches(rec.AppliedGW, cur.GatewayURLs, spec.Target.Gateway()):
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
