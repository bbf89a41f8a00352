// Package metrics exposes a worker's Prometheus metrics and its HTTP
// listener (/metrics, /healthz, /readyz).
//
// Two kinds of series, so that a sum over every worker means what it says:
//
//   - What this process did (API calls, their latency, the CVMs it
//     finished or snoozed): every worker exports its own; sum them.
//   - What Redis holds (rollout states and counts, the queue, the rates and
//     limits, the live workers): read at scrape time, and exported only by
//     the worker holding the controller lock (store.Leader), so they are
//     never multiplied by the number of workers. The others export none of
//     them; scrape every worker and a query finds the one that does.
//
// Per-rollout series end with the rollout: the Redis gauges cover only
// active rollouts, and a worker drops its per-rollout counters once the
// rollout has been inactive for Options.Grace.
package metrics

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Options configures a worker's metrics.
type Options struct {
	// Store is the Redis the Redis-derived gauges and /readyz read; nil:
	// the process's own metrics only.
	Store *store.Store
	// Owner is this process's controller-lock owner (the worker's name):
	// the Redis-derived gauges are exported only while it holds the lock.
	// "" exports them always: for a lone exporter that runs no controller,
	// never beside workers that export them too.
	Owner string
	// Rate is the worker's defaults for what a rollout file leaves unset
	// (`worker --rate`, `--max-in-flight`), as the handler applies them.
	Rate plan.Rate
	// Grace is how long a worker keeps the counters of a rollout that is
	// no longer active, so the last increments reach Prometheus
	// (default DefaultGrace).
	Grace time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// DefaultGrace is well above any scrape interval.
const DefaultGrace = 10 * time.Minute

// Metrics holds a worker's collectors.
type Metrics struct {
	opt       Options
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	outcomes  *prometheus.CounterVec
	throttled *prometheus.CounterVec
	// notifications: rollout_notifications_total (notify.go)
	notifications *prometheus.CounterVec

	mu   sync.Mutex
	seen map[string]time.Time // rollout -> when it was last active or counted here
}

// New registers the collectors.
func New(opt Options) *Metrics {
	if opt.Grace <= 0 {
		opt.Grace = DefaultGrace
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	m := &Metrics{
		opt:  opt,
		reg:  prometheus.NewRegistry(),
		seen: map[string]time.Time{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_api_requests_total",
			Help: "Phala API calls this worker made, by operation and HTTP status (0: no answer)."}, []string{"op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rollout_api_request_duration_seconds",
			Help: "Phala API call latency, this worker's calls.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"op"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_cvm_outcomes_total",
			Help: "CVMs this worker finished, by rollout and final state (dropped a while after the rollout ends)."}, []string{"rollout", "state"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_cvm_snoozed_total",
			Help: "Tries this worker put back without counting an attempt (rate limit, 429, pause, window), by rollout (dropped a while after the rollout ends)."}, []string{"rollout"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.outcomes, m.throttled, buildInfo(),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.notifications = newNotifications() // notify.go
	m.reg.MustRegister(m.notifications)
	if opt.Store != nil {
		m.reg.MustRegister(newRedisCollector(opt), &memoryCollector{st: opt.Store, owner: opt.Owner})
	}
	return m
}

// Registry is what /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Outcome counts a finished CVM.
func (m *Metrics) Outcome(rollout, state string) {
	m.touch(rollout)
	m.outcomes.WithLabelValues(rollout, state).Inc()
}

// Snoozed counts a try put back without an attempt.
func (m *Metrics) Snoozed(rollout string) {
	m.touch(rollout)
	m.throttled.WithLabelValues(rollout).Inc()
}

func (m *Metrics) touch(rollout string) {
	m.mu.Lock()
	m.seen[rollout] = m.opt.Now()
	m.mu.Unlock()
}

// Prune drops the counters of rollouts that have not been active for
// Grace (one read of the active set); /metrics runs it before each scrape.
func (m *Metrics) Prune(ctx context.Context) error {
	if m.opt.Store == nil {
		return nil
	}
	m.mu.Lock()
	n := len(m.seen)
	m.mu.Unlock()
	if n == 0 {
		return nil
	}
	active, err := m.opt.Store.Active(ctx)
	if err != nil {
		return err
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range active {
		if _, ok := m.seen[id]; ok {
			m.seen[id] = now
		}
	}
	for id, at := range m.seen {
		if now.Sub(at) >= m.opt.Grace {
			delete(m.seen, id)
			m.outcomes.DeletePartialMatch(prometheus.Labels{"rollout": id})
			m.throttled.DeletePartialMatch(prometheus.Labels{"rollout": id})
		}
	}
	return nil
}

// Instrument wraps an API client to count and time every call.
func (m *Metrics) Instrument(a tasks.API) tasks.API { return &instrumented{API: a, m: m} }

type instrumented struct {
	tasks.API
	m *Metrics
}

func (i *instrumented) observe(op string, start time.Time, err error) {
	i.m.latency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	code := 200
	if err != nil {
		code = api.StatusOf(err)
	}
	i.m.requests.WithLabelValues(op, strconv.Itoa(code)).Inc()
}

func (i *instrumented) GetCVM(ctx context.Context, id string) (*api.CVM, error) {
	start := time.Now()
	c, err := i.API.GetCVM(ctx, id)
	i.observe("get_cvm", start, err)
	return c, err
}

func (i *instrumented) GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error) {
	start := time.Now()
	c, err := i.API.GetNetworkConfig(ctx, id)
	i.observe("get_network_config", start, err)
	return c, err
}

func (i *instrumented) PatchNetworkConfig(ctx context.Context, id string, upd api.NetworkConfigUpdate) (*api.NetworkConfig, error) {
	start := time.Now()
	c, err := i.API.PatchNetworkConfig(ctx, id, upd)
	i.observe("patch_network_config", start, err)
	return c, err
}
