package control_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestStalledOncePerStall: a running rollout whose stage has CVMs left and
// that has not moved for StallAfter is reported stalled once (audit line
// and notification), not again at every tick, and not before.
func TestStalledOncePerStall(t *testing.T) {
	b := testutil.Setup(t, crashFleet)
	p := b.Apply(t, head+"notify: [{url: \"http://127.0.0.1:1/h\", events: [stalled]}]\n")
	ctx := context.Background()
	ctl := &control.Controller{Control: b.Control(), StallAfter: 10 * time.Minute}
	start := get(t, b, p.ID).UpdatedAt
	for _, at := range []time.Duration{time.Minute, 11 * time.Minute, 12 * time.Minute, 30 * time.Minute} {
		if err := ctl.Step(ctx, p.ID, start.Add(at)); err != nil {
			t.Fatal(err)
		}
	}
	evs, _ := b.Store.Events(ctx, p.ID, 0)
	n := 0
	for _, e := range evs {
		if strings.HasPrefix(e.What, "stalled: no CVM of stage 1 moved for 11m0s") {
			n++
		}
	}
	ns, _ := b.Store.Notifications(ctx, p.ID)
	if n != 1 || len(ns) != 1 || ns[0].Event != "stalled" {
		t.Fatalf("%d stall lines in %+v; notifications %+v", n, evs, ns)
	}
}

// TestRollbackNotifications: a rollback notifies the rollout's targets as
// rollback_started and rollback_completed.
func TestRollbackNotifications(t *testing.T) {
	b := testutil.Setup(t, crashFleet)
	ctx := context.Background()
	p := b.Apply(t, head+"notify: [{url: \"http://127.0.0.1:1/h\", events: [applied, completed, rollback_started, rollback_completed]}]\n")
	b.Workers(t, 1, 4)
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	rp, err := b.Control().PlanRollback(ctx, b.API, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	a, err := b.Control().ApplyRollback(ctx, rp, p.ID, "test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b.WaitState(t, a.ID, 30*time.Second, store.RolloutCompleted)
	var kinds []string
	for _, id := range []string{p.ID, a.ID} {
		ns, _ := b.Store.Notifications(ctx, id)
		for _, n := range ns {
			kinds = append(kinds, n.Event)
		}
	}
	if want := []string{"applied", "completed", "rollback_started", "rollback_completed"}; !slices.Equal(kinds, want) {
		t.Fatalf("notifications %v, want %v", kinds, want)
	}
}
