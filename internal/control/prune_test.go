package control_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// finished records a completed rollout of n CVMs that ended at at, and
// settles it (as the controller would have).
func finished(t *testing.T, st *store.Store, id string, n int, at time.Time, state store.RolloutState) {
	t.Helper()
	ctx := context.Background()
	nr := store.NewRollout{ID: id, Name: "p", Spec: "{}", CreatedBy: "alice", State: state, Event: "applied",
		Stages: []store.NewStage{{Name: "all"}}}
	cvmState := store.Unchanged
	if state != store.RolloutCompleted {
		cvmState = store.Pending
	}
	for i := range n {
		nr.CVMs = append(nr.CVMs, store.NewCVM{ID: fmt.Sprintf("cvm_%s_%d", id, i), Name: "x", State: cvmState})
	}
	if _, err := st.Create(ctx, nr, at); err != nil {
		t.Fatal(err)
	}
	if state == store.RolloutCompleted {
		if _, err := st.Settle(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

func familyKeys(t *testing.T, rdb redis.UniversalClient, id string) int {
	keys, err := rdb.Keys(context.Background(), "rollout:{"+store.Family(id)+"}*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestPruneCrashAtEveryCommand kills prune after each of its Redis
// commands in turn, then runs it again: the old finished rollouts end
// pruned (records gone, summary and audit trail kept, or all gone with
// --all), each exported whole before anything of it went, and nothing of
// the recent, the running or the in-grace rollout is touched.
func TestPruneCrashAtEveryCommand(t *testing.T) {
	for _, all := range []bool{false, true} {
		t.Run(fmt.Sprintf("all=%v", all), func(t *testing.T) {
			rdb, _ := testutil.Redis(t)
			b := &testutil.Bundle{RDB: rdb, Store: store.New(rdb)}
			ctx, now := context.Background(), time.Now()
			for after := 0; ; after++ {
				if after > 400 {
					t.Fatal("prune never ran whole")
				}
				rdb.FlushDB(ctx)
				old := []string{"old-00000001", "old-00000002"}
				for _, id := range old {
					finished(t, b.Store, id, 7, now.Add(-40*24*time.Hour), store.RolloutCompleted)
				}
				finished(t, b.Store, "recent-00000003", 5, now.Add(-3*24*time.Hour), store.RolloutCompleted) // in its grace
				finished(t, b.Store, "live-00000004", 5, now.Add(-40*24*time.Hour), store.RolloutRunning)
				keep := map[string]int{"recent-00000003": familyKeys(t, rdb, "recent-00000003"), "live-00000004": familyKeys(t, rdb, "live-00000004")}
				exported := map[string]int{}
				export := func(ctx context.Context, r *store.Rollout) error {
					n := 0
					err := b.Store.Records(ctx, r.ID, func(store.CVMRecord) error { n++; return nil })
					if n != r.Total {
						t.Fatalf("%s exported with %d of %d records", r.ID, n, r.Total)
					}
					exported[r.ID]++
					return err
				}
				opts := control.PruneOptions{OlderThan: 2 * 24 * time.Hour, All: all, Export: export}
				crashing, crash := b.CrashingClient(t, after)
				_, err := control.New(crashing).Prune(ctx, now, opts)
				if !crash.Crashed() && err != nil {
					t.Fatalf("after %d: %v", after, err)
				}
				pruned, err := b.Control().Prune(ctx, now, opts)
				if err != nil {
					t.Fatalf("after %d, re-run: %v", after, err)
				}
				if !crash.Crashed() && len(pruned) != 0 {
					t.Fatalf("a re-run of a whole prune pruned again: %+v", pruned)
				}
				for _, id := range old {
					if exported[id] == 0 {
						t.Fatalf("after %d: %s pruned without its export", after, id)
					}
					r, err := b.Store.Get(ctx, id)
					if all {
						if n := familyKeys(t, rdb, id); n != 0 || err == nil {
							t.Fatalf("after %d: --all left %d keys of %s", after, n, id)
						}
						if s, _ := rdb.ZScore(ctx, store.IndexKey, id).Result(); s != 0 {
							t.Fatalf("after %d: %s still listed", after, id)
						}
						continue
					}
					if err != nil || r.PrunedAt.IsZero() || r.Pruning != "" || r.Counts[store.Unchanged] != 7 || r.CreatedBy != "alice" {
						t.Fatalf("after %d: summary of %s: %+v %v", after, id, r, err)
					}
					if ids, _ := b.Store.CVMIDs(ctx, id); len(ids) != 0 {
						t.Fatalf("after %d: %s keeps %d CVM ids", after, id, len(ids))
					}
					if n, _ := rdb.Exists(ctx, store.CVMKey(id, "cvm_"+id+"_3")).Result(); n != 0 {
						t.Fatalf("after %d: a CVM record of %s survived", after, id)
					}
					evs, _ := b.Store.Events(ctx, id, 0)
					if len(evs) != 2 || evs[0].What != "applied" {
						t.Fatalf("after %d: audit trail of %s: %+v", after, id, evs)
					}
				}
				for id, n := range keep {
					if got := familyKeys(t, rdb, id); got != n {
						t.Fatalf("after %d: %s has %d keys, had %d", after, id, got, n)
					}
				}
				if !crash.Crashed() {
					t.Logf("prune runs whole after %d commands; every crash point before that re-runs clean", after)
					return
				}
			}
		})
	}
}
