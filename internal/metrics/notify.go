package metrics

import (
	"context"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Issue 10's series: notification deliveries (this worker's, like the
// other counters) and Redis memory (read from Redis at scrape time, on the
// lock holder only, like the other Redis gauges).

var memoryDesc = prometheus.NewDesc("rollout_redis_memory_used_ratio",
	"Redis used_memory / maxmemory (0: no maxmemory set); the worker holding the lock logs a warning above 0.8."+onlyLeader, nil, nil)

func newNotifications() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rollout_notifications_total",
		Help: "Notification delivery attempts this worker made, by result (delivered; failed: retried later; given_up: past --notify-max-age)."}, []string{"result"})
}

// Notified counts one notification delivery attempt by its result.
func (m *Metrics) Notified(result string) { m.notifications.WithLabelValues(result).Inc() }

// memoryCollector exports rollout_redis_memory_used_ratio from INFO memory.
type memoryCollector struct {
	st    *store.Store
	owner string
}

func (c *memoryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- memoryDesc }

func (c *memoryCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if c.owner != "" {
		if leader, err := c.st.Leader(ctx); err != nil || leader != c.owner {
			return
		}
	}
	used, limit, err := c.st.Memory(ctx)
	if err != nil {
		return
	}
	ratio := 0.0
	if limit > 0 {
		ratio = float64(used) / float64(limit)
	}
	gauge(ch, memoryDesc, ratio)
}
