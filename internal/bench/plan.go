package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
)

// plan times plan.Build of an n-CVM fleet over loopback HTTP: one paged
// list, then one network-config read per patchable CVM (32 at once).
func (b *runner) plan(ctx context.Context) ([]Row, error) {
	n := b.cfg.Sizes[StagePlan]
	s, err := startSim(n, true)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	f, err := rolloutFile("bench-plan")
	if err != nil {
		return nil, err
	}
	start := time.Now()
	p, err := plan.Build(ctx, s.Client, f, 0)
	if err != nil {
		return nil, err
	}
	d := time.Since(start)
	if got := p.Counts[plan.Patch]; got != n {
		return nil, fmt.Errorf("plan has %d CVMs to patch, want %d (%v)", got, n, p.Counts)
	}
	st := s.Sim.Stats()
	b.progress("plan: %d CVMs in %s (%d requests)", n, d.Round(time.Millisecond), st.Requests)
	return []Row{{
		Stage:  fmt.Sprintf("plan %s CVMs (Build over HTTP)", thousands(int64(n))),
		Ours:   rate(n, d),
		Target: "< 5 s",
		Result: verdict(d < 5*time.Second),
		Note:   fmt.Sprintf("%d requests (%d list pages of 100, one network-config GET per CVM, %d at once)", st.Requests, (n+99)/100, plan.DefaultReadConcurrency),
	}}, nil
}
