package control_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestPromoteFull: promote --full during the canary passes its gate and
// the later manual one, in one audit line, while a bake between them still
// runs; a second --full is refused, and a plain promote still works
// alongside.
func TestPromoteFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, fleet)
		p := b.Apply(t, head+"stages: [{name: canary, count: 2, promote: manual}, {name: some, count: 4, bake: 5m}, {name: more, count: 6, promote: manual}, \"100%\"]\n")
		ctx := context.Background()
		// Before any CVM is done: --full does not wait for the stage.
		if _, err := b.Control().PromoteFull(ctx, p.ID, "op", time.Now()); err != nil {
			t.Fatal(err)
		}
		_, err := b.Control().PromoteFull(ctx, p.ID, "op", time.Now())
		var ne *store.NotAllowedError
		if !errors.As(err, &ne) || !strings.Contains(err.Error(), "given already") {
			t.Fatalf("second promote --full: %v", err)
		}
		b.Workers(t, 2, 4)
		waitFor(t, 10*time.Minute, "stage 2 done", func() bool { return get(t, b, p.ID).Stages[1].Done() == 4 })
		started := time.Now()
		// The bake of stage 2 still holds.
		time.Sleep(4 * time.Minute)
		if r := get(t, b, p.ID); r.Stage != 1 {
			t.Fatalf("stage %d during stage 2's bake", r.Stage+1)
		}
		// Stage 3's manual gate is passed with no other promote.
		r := b.WaitState(t, p.ID, time.Hour, store.RolloutCompleted)
		if time.Since(started) < 5*time.Minute {
			t.Fatalf("completed %s after stage 2 was done: the bake did not run", time.Since(started))
		}
		if r.Counts[store.Succeeded] != len(p.Items) {
			t.Fatalf("counts %v", r.Counts)
		}
		evs, err := b.Store.Events(ctx, p.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range evs {
			if strings.HasPrefix(ev.What, "promote --full: stage 1 and every later manual gate promoted") && ev.By == "op" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d promote --full audit lines, want 1: %+v", n, evs)
		}
	})
}
