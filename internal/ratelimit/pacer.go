package ratelimit

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"golang.org/x/time/rate"
)

// The planner's pacing (api.Pacer): `apply` reads through the rollout's
// shared limiter, so a plan made while workers run spends from the same
// budget; `plan`, which has no Redis, through one of its own by the same
// rule (Local).

// FileLimits is what a rollout file's rate section asks for, before any
// worker's defaults (a planner has none).
func FileLimits(r plan.Rate) Limits {
	return Limits{PerSecond: r.RequestsPerSecond(), Burst: r.Burst, MaxInFlight: r.MaxInFlight, Adaptive: r.IsAdaptive()}
}

// PlanPacer paces the plan of rollout id whose file is f: through the
// shared limiter when l is not nil and the file gives a rate, else
// through a Local one.
func (l *Limiter) PlanPacer(id string, f *plan.File) api.Pacer {
	lim := FileLimits(f.Rate)
	if l != nil && lim.PerSecond > 0 {
		return l.Pacer(id, lim)
	}
	return NewLocal(lim)
}

// Pacer paces a planner's reads through the rollout's shared limiter
// (lim.PerSecond > 0): a token each, and every answer told to the
// adaptive rate the workers share.
func (l *Limiter) Pacer(id string, lim Limits) api.Pacer { return &shared{l: l, id: id, lim: lim} }

type shared struct {
	l   *Limiter
	id  string
	lim Limits
}

func (s *shared) Wait(ctx context.Context) error {
	for {
		wait, err := s.l.Take(ctx, s.id, s.lim)
		if err != nil || wait == 0 {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (s *shared) Done(err error) {
	_ = s.l.Observe(context.Background(), s.id, s.lim, ClassOf(err))
}

// Local is a planner's own pacer, in this process: a token bucket at the
// file's rate, adapted by Next on windows of its own answers. With no rate
// (lim.PerSecond 0) it does not pace until the API first says overload,
// then holds near what the API accepted, as the workers' rate does.
type Local struct {
	mu             sync.Mutex
	tb             *rate.Limiter
	ceiling, floor float64
	burst          int
	state          store.PaceRecord
	counts         store.PaceCounts
	started        time.Time
}

// NewLocal returns a Local for lim.
func NewLocal(lim Limits) *Local {
	ceiling, floor := lim.PerSecond, floorOf(lim)
	if ceiling <= 0 {
		ceiling, floor = math.Inf(1), 1
	}
	if !lim.Adaptive && lim.PerSecond > 0 {
		floor = ceiling
	}
	p := &Local{ceiling: ceiling, floor: floor, burst: lim.Burst, started: time.Now()}
	p.state = store.PaceRecord{Rate: ceiling, Ssthresh: ceiling}
	p.tb = rate.NewLimiter(p.limit(ceiling), p.burstFor(ceiling))
	return p
}

func (p *Local) limit(r float64) rate.Limit {
	if math.IsInf(r, 1) {
		return rate.Inf
	}
	return rate.Limit(r)
}

func (p *Local) burstFor(r float64) int {
	if p.burst > 0 {
		return p.burst
	}
	if math.IsInf(r, 1) {
		return 1
	}
	return max(1, int(r/10))
}

// Wait implements api.Pacer.
func (p *Local) Wait(ctx context.Context) error {
	p.mu.Lock()
	tb := p.tb
	p.mu.Unlock()
	return tb.Wait(ctx)
}

// Done implements api.Pacer.
func (p *Local) Done(err error) {
	c := ClassOf(err)
	if c == Ignored {
		return
	}
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	c.add(&p.counts)
	if now.Sub(p.started) < Window {
		return
	}
	next := Next(p.state, p.counts, p.started, now, p.ceiling, p.floor)
	p.counts, p.started = store.PaceCounts{}, now
	if next.Rate != p.state.Rate {
		p.tb.SetLimit(p.limit(next.Rate))
		p.tb.SetBurst(p.burstFor(next.Rate))
	}
	p.state = next
}

// Rate is the rate it paces at now (+Inf: none yet).
func (p *Local) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state.Rate
}
