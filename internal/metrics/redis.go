package metrics

import (
	"context"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/prometheus/client_golang/prometheus"
)

// PingTimeout bounds the Redis PING of rollout_redis_up and /readyz.
const PingTimeout = time.Second

// Every worker exports its view of Redis.
var redisUpDesc = prometheus.NewDesc("rollout_redis_up",
	"1 when this worker's Redis answered a PING within a second, else 0. Exported by every worker.", nil, nil)

// The gauges read from Redis; only the controller-lock holder exports
// them (see the package comment), so do not sum them across workers.
const onlyLeader = " Read from Redis; exported only by the worker holding the controller lock."

var (
	workersDesc = prometheus.NewDesc("rollout_workers_alive",
		"Worker processes with a live heartbeat in the queue."+onlyLeader, nil, nil)
	queueDesc = prometheus.NewDesc("rollout_queue_tasks",
		"Tasks in the rollout queue by asynq state (scheduled: waiting out a backoff, throttle, pause or window)."+onlyLeader, []string{"state"}, nil)
	latencyDesc = prometheus.NewDesc("rollout_queue_latency_seconds",
		"How long the oldest pending task has waited."+onlyLeader, nil, nil)
	cvmsDesc = prometheus.NewDesc("rollout_cvms",
		"CVMs of an active rollout by state."+onlyLeader, []string{"rollout", "state"}, nil)
	stateDesc = prometheus.NewDesc("rollout_state",
		"1 for the active rollout's current state."+onlyLeader, []string{"rollout", "state"}, nil)
	stageDesc = prometheus.NewDesc("rollout_stage",
		"The active rollout's current stage, counted from 0."+onlyLeader, []string{"rollout"}, nil)
	stagesDesc = prometheus.NewDesc("rollout_stages",
		"How many stages the active rollout has."+onlyLeader, []string{"rollout"}, nil)
	stageCVMsDesc = prometheus.NewDesc("rollout_stage_cvms",
		"CVMs of each stage of an active rollout by state (stage counted from 0)."+onlyLeader, []string{"rollout", "stage", "stage_name", "state"}, nil)
	waitingDesc = prometheus.NewDesc("rollout_stage_waiting",
		"1 while a running rollout's current stage is done and it waits for the stage's bake or a manual promote."+onlyLeader, []string{"rollout"}, nil)
	budgetLeftDesc = prometheus.NewDesc("rollout_budget_left",
		"Failures the failure budget still allows before it trips (rollouts with a budget)."+onlyLeader, []string{"rollout"}, nil)
	trippedDesc = prometheus.NewDesc("rollout_budget_tripped",
		"1 when the failure budget paused or cancelled the rollout."+onlyLeader, []string{"rollout"}, nil)
	rateLimitDesc = prometheus.NewDesc("rollout_rate_limit_per_second",
		"The rollout's API request rate limit across all workers: the file's rate, else the worker's --rate (rollouts with a rate)."+onlyLeader, []string{"rollout"}, nil)
	rateNowDesc = prometheus.NewDesc("rollout_rate_adaptive_per_second",
		"The rollout's request rate now: the limit, lowered by adaptive backoff after 429/503 answers (rollouts with a rate)."+onlyLeader, []string{"rollout"}, nil)
	inFlightDesc = prometheus.NewDesc("rollout_in_flight",
		"CVMs of the rollout being worked on now (running: each holds an in-flight slot when there is a limit)."+onlyLeader, []string{"rollout"}, nil)
	inFlightLimitDesc = prometheus.NewDesc("rollout_in_flight_limit",
		"The rollout's max_in_flight across all workers, or the worker's --max-in-flight (rollouts with a limit)."+onlyLeader, []string{"rollout"}, nil)
)

// redisCollector reads Redis at scrape time: a PING on every worker; on
// the lock holder, the queue (asynq's counters), the live servers, and
// one HGETALL per active rollout (plus one HGET for an adaptive rate),
// whatever its size.
type redisCollector struct {
	st    *store.Store
	owner string
	insp  *asynq.Inspector
	pacer *tasks.Pacer
	lim   *ratelimit.Limiter
}

func newRedisCollector(opt Options) *redisCollector {
	rdb := opt.Store.Redis()
	return &redisCollector{st: opt.Store, owner: opt.Owner, insp: asynq.NewInspectorFromRedisClient(rdb),
		pacer: &tasks.Pacer{Defaults: opt.Rate}, lim: ratelimit.New(rdb)}
}

func (c *redisCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{redisUpDesc, workersDesc, queueDesc, latencyDesc, cvmsDesc, stateDesc, stageDesc, stagesDesc,
		stageCVMsDesc, waitingDesc, budgetLeftDesc, trippedDesc, rateLimitDesc, rateNowDesc, inFlightDesc, inFlightLimitDesc} {
		ch <- d
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func (c *redisCollector) Collect(ch chan<- prometheus.Metric) {
	pctx, cancel := context.WithTimeout(context.Background(), PingTimeout)
	err := c.st.Redis().Ping(pctx).Err()
	cancel()
	if err != nil {
		gauge(ch, redisUpDesc, 0)
		return
	}
	gauge(ch, redisUpDesc, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c.owner != "" {
		if leader, err := c.st.Leader(ctx); err != nil || leader != c.owner {
			return
		}
	}
	if q, err := c.insp.GetQueueInfo(tasks.Queue); err == nil {
		for state, n := range map[string]int{"pending": q.Pending, "active": q.Active, "scheduled": q.Scheduled,
			"retry": q.Retry, "archived": q.Archived} {
			gauge(ch, queueDesc, float64(n), state)
		}
		gauge(ch, latencyDesc, q.Latency.Seconds())
	}
	if servers, err := c.insp.Servers(); err == nil {
		gauge(ch, workersDesc, float64(tasks.WorkerProcesses(servers)))
	}
	ids, err := c.st.Active(ctx)
	if err != nil {
		return
	}
	for _, id := range ids {
		if r, err := c.st.Get(ctx, id); err == nil {
			c.rollout(ctx, ch, r)
		}
	}
}

// rollout exports one active rollout's gauges.
func (c *redisCollector) rollout(ctx context.Context, ch chan<- prometheus.Metric, r *store.Rollout) {
	id := r.ID
	for _, s := range store.CVMStates {
		gauge(ch, cvmsDesc, float64(r.Counts[s]), id, string(s))
	}
	gauge(ch, stateDesc, 1, id, string(r.State))
	gauge(ch, stageDesc, float64(r.Stage), id)
	gauge(ch, stagesDesc, float64(len(r.Stages)), id)
	for _, sg := range r.Stages {
		for _, s := range store.CVMStates {
			gauge(ch, stageCVMsDesc, float64(sg.Counts[s]), id, strconv.Itoa(sg.Index), sg.Name, string(s))
		}
	}
	// What the controller's advance waits on once a stage is done.
	waiting := r.State == store.RolloutRunning && r.Stage < len(r.Stages) && r.Stages[r.Stage].Left() == 0 && r.Stage+1 < len(r.Stages)
	gauge(ch, waitingDesc, b2f(waiting), id)
	if left, ok := r.BudgetLeft(); ok {
		gauge(ch, budgetLeftDesc, float64(left), id)
	}
	gauge(ch, trippedDesc, b2f(r.BudgetTripped()), id)
	gauge(ch, inFlightDesc, float64(r.Counts[store.Running]), id)
	spec, err := control.Spec(r)
	if err != nil {
		return
	}
	lim := c.pacer.Limits(spec)
	if lim.MaxInFlight > 0 {
		gauge(ch, inFlightLimitDesc, float64(lim.MaxInFlight), id)
	}
	if lim.PerSecond > 0 {
		gauge(ch, rateLimitDesc, lim.PerSecond, id)
		if now, err := c.lim.Rate(ctx, id, lim); err == nil {
			gauge(ch, rateNowDesc, now, id)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
