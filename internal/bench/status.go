package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/store"
)

// statusReads is how many store.Get calls each size is timed over.
const statusReads = 300

// status times store.Get (what `rollout status` reads) of a rollout of n
// CVMs against one of 1,000: one HGETALL of counters, no scan of CVMs.
func (b *runner) status(ctx context.Context) ([]Row, error) {
	n := b.cfg.Sizes[StageStatus]
	small := min(1000, n)
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	st := store.New(b.rdb)
	f, err := rolloutFile("bench-status")
	if err != nil {
		return nil, err
	}
	spec, _ := json.Marshal(f)
	sizes := []int{small, n}
	for _, size := range sizes {
		nr := store.NewRollout{ID: statusID(size), Name: "bench-status", Spec: string(spec), SpecHash: f.Hash(), CreatedBy: "bench",
			State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}}, AllowOverlap: true}
		for i, cvm := range cvmIDs(size) {
			nr.CVMs = append(nr.CVMs, store.NewCVM{ID: cvm, Name: fmt.Sprintf("prod-web-%06d", i+1), State: store.Pending})
		}
		if _, err := st.Create(ctx, nr, time.Now()); err != nil {
			return nil, err
		}
	}
	// Reads of the two sizes alternate, so load from elsewhere on the
	// machine falls on both alike.
	times := map[int][]time.Duration{}
	for i := range statusReads + 20 {
		for _, size := range sizes {
			t0 := time.Now()
			r, err := st.Get(ctx, statusID(size))
			d := time.Since(t0)
			if err != nil {
				return nil, err
			}
			if r.Total != size {
				return nil, fmt.Errorf("rollout %s: total %d, want %d", statusID(size), r.Total, size)
			}
			if i >= 20 { // the first reads warm the connection pool
				times[size] = append(times[size], d)
			}
		}
	}
	big50, big99 := percentile(times[n], 0.5), percentile(times[n], 0.99)
	small50, small99 := percentile(times[small], 0.5), percentile(times[small], 0.99)
	b.progress("status: Get p50 %s (%d CVMs) vs %s (%d CVMs)", big50, n, small50, small)
	return []Row{{
		Stage:    fmt.Sprintf("status %s CVMs (store.Get p50 / p99)", thousands(int64(n))),
		Ours:     secs(big50) + " / " + secs(big99),
		Baseline: fmt.Sprintf("%s / %s at %s CVMs", secs(small50), secs(small99), thousands(int64(small))),
		Ratio:    fmt.Sprintf("%.2fx", big50.Seconds()/small50.Seconds()),
		Target:   "< 50 ms, size-independent",
		Result:   verdict(big99 < 50*time.Millisecond),
		Note:     fmt.Sprintf("%d reads per size, alternating; ratio is p50 at %s CVMs over p50 at %s", statusReads, thousands(int64(n)), thousands(int64(small))),
	}}, nil
}

func statusID(size int) string { return fmt.Sprintf("bench-status-%d", size) }
