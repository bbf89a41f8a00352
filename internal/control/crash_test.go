package control_test

import (
	"context"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// crashFleet is small: every operation is run once per Redis command it
// sends.
var crashFleet = sim.FleetOptions{CVMs: 6, Seed: 21, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}

// crashOp is a multi-write operation to kill at every command.
type crashOp struct {
	name string
	// setup brings the fleet and Redis to where op starts; it returns
	// what op needs.
	setup func(t *testing.T, b *testutil.Bundle) *plan.Plan
	// op is the operation, on a Control whose Redis may die part-way.
	op func(c *control.Control, b *testutil.Bundle, p *plan.Plan) error
	// done checks the end state once a re-run and the workers finished.
	done func(t *testing.T, b *testutil.Bundle, p *plan.Plan)
}

// TestCrashAtEveryCommand kills each multi-write operation after its
// first n Redis commands, for every n until it runs whole: after the
// crash, the operator's re-run (the same command again) and the workers
// must finish the job with nothing lost or done twice, and the records
// must be consistent (counters match records, claims given back).
func TestCrashAtEveryCommand(t *testing.T) {
	for _, c := range []crashOp{
		{
			name:  "apply",
			setup: func(t *testing.T, b *testutil.Bundle) *plan.Plan { return build(t, b, head+"stages: [2, \"100%\"]\n") },
			op: func(c *control.Control, b *testutil.Bundle, p *plan.Plan) error {
				_, err := c.Apply(context.Background(), p, "test", time.Now(), control.ApplyOptions{})
				return err
			},
			done: func(t *testing.T, b *testutil.Bundle, p *plan.Plan) {
				atTargetOnce(t, b, p, p.ID, "https://kms-new.example:8000")
			},
		},
		{
			name: "retry --failed",
			setup: func(t *testing.T, b *testutil.Bundle) *plan.Plan {
				p := build(t, b, head)
				bad := p.Items[1].CVMID
				b.Sim.FailPatch(bad, 403)
				if _, err := b.Control().Apply(context.Background(), p, "test", time.Now(), control.ApplyOptions{}); err != nil {
					t.Fatal(err)
				}
				stop := b.Workers(t, 1, 4)
				if r := b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted); r.Counts[store.Failed] != 1 {
					t.Fatalf("setup: %v", r.Counts)
				}
				stop()
				b.Sim.FailPatch(bad, 0)
				return p
			},
			op: func(c *control.Control, b *testutil.Bundle, p *plan.Plan) error {
				_, err := c.RetryFailed(context.Background(), p.ID, "test", time.Now())
				return err
			},
			done: func(t *testing.T, b *testutil.Bundle, p *plan.Plan) {
				b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
				for id, rec := range accountedFor(t, b, p) {
					if kms, _, _ := b.Sim.Config(id); rec.State != store.Succeeded || kms[0] != "https://kms-new.example:8000" {
						t.Fatalf("%s: %s at %v", id, rec.State, kms)
					}
				}
			},
		},
		{
			name: "rollback",
			setup: func(t *testing.T, b *testutil.Bundle) *plan.Plan {
				p := build(t, b, head)
				if _, err := b.Control().Apply(context.Background(), p, "test", time.Now(), control.ApplyOptions{}); err != nil {
					t.Fatal(err)
				}
				stop := b.Workers(t, 1, 4)
				b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
				stop()
				return p
			},
			op: func(c *control.Control, b *testutil.Bundle, p *plan.Plan) error {
				rp, err := c.PlanRollback(context.Background(), b.API, p.ID)
				if err != nil {
					return err
				}
				_, err = c.ApplyRollback(context.Background(), rp, p.ID, "test", time.Now())
				return err
			},
			done: func(t *testing.T, b *testutil.Bundle, p *plan.Plan) {
				r := b.WaitState(t, control.RollbackID(p.ID), time.Hour, store.RolloutCompleted)
				if r.Counts[store.Succeeded] != len(p.Items) {
					t.Fatalf("rollback counts %v", r.Counts)
				}
				for _, it := range p.Items {
					if kms, _, _ := b.Sim.Config(it.CVMID); fmt.Sprint(kms) != fmt.Sprint(it.KMS) {
						t.Fatalf("%s at %v, before-image %v", it.CVMID, kms, it.KMS)
					}
				}
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			for n := 0; ; n++ {
				whole := false
				synctest.Test(t, func(t *testing.T) {
					b := testutil.InBubble(t, crashFleet)
					p := c.setup(t, b)
					rdb, crash := b.CrashingClient(t, n)
					err := c.op(control.New(rdb), b, p)
					if !crash.Crashed() {
						if err != nil {
							t.Fatalf("no crash, yet: %v", err)
						}
						whole = true
					} else if err == nil {
						t.Fatalf("crash after %d commands went unnoticed", n)
					} else if err := c.op(b.Control(), b, p); err != nil {
						t.Fatalf("re-run after a crash at command %d: %v", n+1, err)
					}
					b.Workers(t, 1, 4)
					c.done(t, b, p)
					settled(t, b)
				})
				if t.Failed() {
					t.Fatalf("crash after command %d", n)
				}
				if whole {
					t.Logf("%s: crashed at each of its %d commands; each re-run finished the job", c.name, n)
					return
				}
			}
		})
	}
}

// build plans file against the simulator.
func build(t *testing.T, b *testutil.Bundle, file string) *plan.Plan {
	t.Helper()
	f, err := plan.Parse("test.yaml", []byte(file))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plan.Build(context.Background(), b.API, f, 4)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// atTargetOnce waits for rollout id to complete with every CVM of p at
// kms after exactly one accepted PATCH.
func atTargetOnce(t *testing.T, b *testutil.Bundle, p *plan.Plan, id, kms string) {
	t.Helper()
	b.WaitState(t, id, time.Hour, store.RolloutCompleted)
	stats := b.Sim.Stats()
	for cvm, rec := range accountedFor(t, b, p) {
		got, _, _ := b.Sim.Config(cvm)
		if rec.State != store.Succeeded || got[0] != kms || stats.PatchesPerCVM[cvm] != 1 {
			t.Fatalf("%s: %s at %v after %d PATCHes", cvm, rec.State, got, stats.PatchesPerCVM[cvm])
		}
	}
}

// settled checks that once everything has ended, the controller took every
// rollout out of the active set and no CVM claim is left.
func settled(t *testing.T, b *testutil.Bundle) {
	t.Helper()
	ctx := context.Background()
	waitFor(t, time.Minute, "the controller to settle", func() bool {
		n, _ := b.RDB.HLen(ctx, store.ActiveKey).Result()
		return n == 0
	})
	if owners, _ := b.RDB.HGetAll(ctx, store.OwnersKey).Result(); len(owners) != 0 {
		t.Fatalf("claims left: %v", owners)
	}
}
