package metrics

import "github.com/prometheus/client_golang/prometheus"

// Issue 10's series: notification deliveries and Redis memory. Package
// level so New registers them with one line; a process has one Metrics.
var (
	notifications = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_notifications_total",
		Help: "Notification delivery attempts by result (delivered, failed: retried later, given_up: past --notify-max-age)."}, []string{"result"})
	redisMemory = prometheus.NewGauge(prometheus.GaugeOpts{Name: "rollout_redis_memory_used_ratio",
		Help: "Redis used_memory / maxmemory, read once a minute by the controller-lock holder (0: no maxmemory set)."})
)

// Notified counts one notification delivery attempt by its result.
func (m *Metrics) Notified(result string) { notifications.WithLabelValues(result).Inc() }

// RedisMemory sets the share of maxmemory Redis uses.
func (m *Metrics) RedisMemory(ratio float64) { redisMemory.Set(ratio) }

// Forget drops the per-rollout series of a pruned rollout.
func (m *Metrics) Forget(rollout string) {
	m.outcomes.DeletePartialMatch(prometheus.Labels{"rollout": rollout})
	m.throttled.DeletePartialMatch(prometheus.Labels{"rollout": rollout})
}
