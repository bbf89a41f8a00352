package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// Benchmarks run on miniredis, or on the real Redis at $REDIS_URL (which
// they flush, as the tests do):
//
//	REDIS_URL=redis://127.0.0.1:16400/0 go test -run '^$' -bench . ./internal/store

// newRollout records a running rollout of n pending CVMs.
func newRollout(b *testing.B, st *store.Store, id string, n int) []string {
	b.Helper()
	nr := store.NewRollout{ID: id, Name: id, Spec: `{"name":"bench"}`, State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}}}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("cvm_%08d", i)
		nr.CVMs = append(nr.CVMs, store.NewCVM{ID: ids[i], Name: "prod-web-" + ids[i], State: store.Pending})
	}
	if _, err := st.Create(context.Background(), nr, time.Now()); err != nil {
		b.Fatal(err)
	}
	return ids
}

// BenchmarkMove is the transition script a worker runs twice per CVM: it
// moves each CVM pending -> running (begin) and back (snooze), in turn.
func BenchmarkMove(b *testing.B) {
	rdb, _ := testutil.Redis(b)
	st := store.New(rdb)
	ids := newRollout(b, st, "bench-move", 1000)
	ctx := context.Background()
	now := time.Now()
	for i := 0; b.Loop(); i++ {
		cvm := ids[i%len(ids)]
		to, mode := store.Running, store.ModeBegin
		if (i/len(ids))%2 == 1 {
			to, mode = store.Pending, store.ModeSnooze
		}
		tr, err := st.Move(ctx, "bench-move", cvm, to, mode, now, "worker", "bench")
		if err != nil || !tr.Changed() {
			b.Fatalf("move %s %s: %+v %v", cvm, mode, tr, err)
		}
	}
}

// BenchmarkMarkPatching is the write before each PATCH.
func BenchmarkMarkPatching(b *testing.B) {
	rdb, _ := testutil.Redis(b)
	st := store.New(rdb)
	ids := newRollout(b, st, "bench-mark", 1000)
	ctx := context.Background()
	prev := []string{"https://kms-old.example:8000"}
	for i := 0; b.Loop(); i++ {
		if _, _, err := st.MarkPatching(ctx, "bench-mark", ids[i%len(ids)], prev, prev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGet is `rollout status`: its cost must not grow with the CVMs.
func BenchmarkGet(b *testing.B) {
	for _, n := range []int{1_000, 20_000} {
		b.Run(fmt.Sprintf("cvms=%d", n), func(b *testing.B) {
			rdb, _ := testutil.Redis(b)
			st := store.New(rdb)
			newRollout(b, st, "bench-get", n)
			ctx := context.Background()
			for b.Loop() {
				if _, err := st.Get(ctx, "bench-get"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkCreate records a 10,000-CVM rollout; ns/CVM is the figure.
func BenchmarkCreate(b *testing.B) {
	const n = 10_000
	rdb, _ := testutil.Redis(b)
	st := store.New(rdb)
	nr := store.NewRollout{ID: "bench-create", Name: "bench", Spec: `{"name":"bench"}`, State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}}}
	for i := range n {
		id := fmt.Sprintf("cvm_%08d", i)
		nr.CVMs = append(nr.CVMs, store.NewCVM{ID: id, Name: "prod-web-" + id, State: store.Pending})
	}
	ctx := context.Background()
	for b.Loop() {
		if err := rdb.HDel(ctx, store.RolloutKey(nr.ID), "ready").Err(); err != nil { // write it again
			b.Fatal(err)
		}
		if _, err := st.Create(ctx, nr, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/CVM")
}
