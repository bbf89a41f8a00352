package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

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

// Rollouts lists the rollouts this worker has per-rollout series of.
func (m *Metrics) Rollouts() []string {
	ch := make(chan prometheus.Metric, 64)
	go func() {
		m.outcomes.Collect(ch)
		m.throttled.Collect(ch)
		close(ch)
	}()
	seen := map[string]bool{}
	var out []string
	for mt := range ch {
		var pb dto.Metric
		if mt.Write(&pb) != nil {
			continue
		}
		for _, l := range pb.GetLabel() {
			if l.GetName() == "rollout" && !seen[l.GetValue()] {
				seen[l.GetValue()] = true
				out = append(out, l.GetValue())
			}
		}
	}
	return out
}
