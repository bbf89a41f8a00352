package tasks

import (
	"context"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/ratelimit"
)

// Pacer applies a rollout's rate section (or the worker's defaults) through
// the shared Redis limiter.
type Pacer struct {
	L        *ratelimit.Limiter
	Defaults plan.Rate // used where the file leaves a field unset
}

// Limits merges the file's rate section over the worker's defaults.
func (p *Pacer) Limits(spec *plan.File) ratelimit.Limits {
	lim := ratelimit.FileLimits(spec.Rate)
	if lim.PerSecond == 0 {
		lim.PerSecond = p.Defaults.RequestsPerSecond()
	}
	if lim.Burst == 0 {
		lim.Burst = p.Defaults.Burst
	}
	if lim.MaxInFlight == 0 {
		lim.MaxInFlight = p.Defaults.MaxInFlight
	}
	return lim
}

// paced wraps the API so every call of one CVM's try takes a rate token
// first and reports how it was answered. A wait too long to hold the task
// comes back as a Snooze, which Classify turns into a throttle.
type paced struct {
	API
	ctxp    *Pacer
	rollout string
	lim     ratelimit.Limits
}

func (p *Pacer) wrap(a API, rollout string, spec *plan.File) API {
	lim := p.Limits(spec)
	if lim.PerSecond <= 0 {
		return a
	}
	return &paced{API: a, ctxp: p, rollout: rollout, lim: lim}
}

func (p *paced) take(ctx context.Context) error {
	wait, err := p.ctxp.L.Take(ctx, p.rollout, p.lim)
	if err != nil {
		return err
	}
	if wait > 0 {
		return &Snooze{After: wait, Reason: "rollout rate limit"}
	}
	return nil
}

// feedback tells the adaptive rate the answer's class (ratelimit.ClassOf:
// 429, 503 with Retry-After, other 5xx, timeout, ok).
func (p *paced) feedback(ctx context.Context, err error) {
	_ = p.ctxp.L.Observe(context.WithoutCancel(ctx), p.rollout, p.lim, ratelimit.ClassOf(err))
}

func (p *paced) GetCVM(ctx context.Context, id string) (*api.CVM, error) {
	if err := p.take(ctx); err != nil {
		return nil, err
	}
	c, err := p.API.GetCVM(ctx, id)
	p.feedback(ctx, err)
	return c, err
}

func (p *paced) GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error) {
	if err := p.take(ctx); err != nil {
		return nil, err
	}
	c, err := p.API.GetNetworkConfig(ctx, id)
	p.feedback(ctx, err)
	return c, err
}

func (p *paced) PatchNetworkConfig(ctx context.Context, id string, upd api.NetworkConfigUpdate) (*api.NetworkConfig, error) {
	if err := p.take(ctx); err != nil {
		return nil, err
	}
	c, err := p.API.PatchNetworkConfig(ctx, id, upd)
	p.feedback(ctx, err)
	return c, err
}

// slot takes one of the rollout's in-flight slots, waiting up to
// ratelimit.MaxInlineWait. wait > 0 means none came free: snooze.
func (p *Pacer) slot(ctx context.Context, rollout, cvm string, spec *plan.File) (release func(), wait time.Duration, err error) {
	lim := p.Limits(spec)
	lease := spec.Retry.WithDefaults().Deadline + time.Minute
	rel, err := p.L.Slot(ctx, rollout, lim, ratelimit.MaxInlineWait, lease, cvm)
	if err != nil {
		return nil, 0, err
	}
	if rel == nil {
		return nil, time.Second, nil
	}
	return rel, 0, nil
}
