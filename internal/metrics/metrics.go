// Package metrics exposes a worker's Prometheus metrics: what the API
// answered and how fast, what happened to each CVM, and, read from Redis at
// scrape time, the per-state counts of every active rollout, so a
// dashboard needs nothing but a scrape of any one worker.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds a worker's collectors.
type Metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	outcomes  *prometheus.CounterVec
	throttled *prometheus.CounterVec
}

// New registers the collectors; st feeds the rollout gauges (may be nil).
func New(st *store.Store) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_api_requests_total",
			Help: "Phala API calls by operation and HTTP status (0: no answer)."}, []string{"op", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rollout_api_request_duration_seconds",
			Help: "Phala API call latency.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"op"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_cvm_outcomes_total",
			Help: "CVMs this worker finished, by rollout and final state."}, []string{"rollout", "state"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_cvm_snoozed_total",
			Help: "Tries put back without counting as an attempt (rate limit, 429, pause, window), by rollout."}, []string{"rollout"}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.outcomes, m.throttled,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(notifications, redisMemory) // notify.go
	if st != nil {
		m.reg.MustRegister(&rolloutCollector{st: st, insp: asynq.NewInspectorFromRedisClient(st.Redis())})
	}
	return m
}

// Handler serves /metrics; health answers /healthz.
func (m *Metrics) Handler(health func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := health(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	return mux
}

// Outcome counts a finished CVM.
func (m *Metrics) Outcome(rollout, state string) { m.outcomes.WithLabelValues(rollout, state).Inc() }

// Snoozed counts a try put back without an attempt.
func (m *Metrics) Snoozed(rollout string) { m.throttled.WithLabelValues(rollout).Inc() }

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

// rolloutCollector reads, at scrape time, the counters of active rollouts
// (one HGETALL per active rollout, whatever its size) and the depth of the
// task queue (asynq's own counters for the one queue).
type rolloutCollector struct {
	st   *store.Store
	insp *asynq.Inspector
}

var cvmsDesc = prometheus.NewDesc("rollout_cvms", "CVMs of an active rollout by state.", []string{"rollout", "state"}, nil)
var stateDesc = prometheus.NewDesc("rollout_state", "1 for the active rollout's current state.", []string{"rollout", "state"}, nil)
var queueDesc = prometheus.NewDesc("rollout_queue_tasks", "Tasks in the rollout queue by asynq state (scheduled: waiting out a backoff, throttle, pause or window).", []string{"state"}, nil)
var latencyDesc = prometheus.NewDesc("rollout_queue_latency_seconds", "How long the oldest pending task has waited.", nil, nil)

func (c *rolloutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- cvmsDesc
	ch <- stateDesc
	ch <- queueDesc
	ch <- latencyDesc
}

func (c *rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if q, err := c.insp.GetQueueInfo(tasks.Queue); err == nil {
		for state, n := range map[string]int{"pending": q.Pending, "active": q.Active, "scheduled": q.Scheduled,
			"retry": q.Retry, "archived": q.Archived} {
			ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(n), state)
		}
		ch <- prometheus.MustNewConstMetric(latencyDesc, prometheus.GaugeValue, q.Latency.Seconds())
	}
	ids, err := c.st.Active(ctx)
	if err != nil {
		return
	}
	for _, id := range ids {
		r, err := c.st.Get(ctx, id)
		if err != nil {
			continue
		}
		for _, s := range store.CVMStates {
			ch <- prometheus.MustNewConstMetric(cvmsDesc, prometheus.GaugeValue, float64(r.Counts[s]), id, string(s))
		}
		ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, 1, id, string(r.State))
	}
}
