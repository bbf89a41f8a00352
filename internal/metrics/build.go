package metrics

import (
	"github.com/phalafleet/rollout/internal/version"
	"github.com/prometheus/client_golang/prometheus"
)

// buildInfo is rollout_build_info, 1 with the build in its labels: what
// `worker --version` prints (internal/version: -ldflags, else the Go
// build info).
func buildInfo() prometheus.Collector {
	v := version.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "rollout_build_info",
		Help:        "1, with the worker's version, commit, build date and Go version as labels. Exported by every worker.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "date": v.Date, "go_version": v.GoVersion}})
	g.Set(1)
	return g
}
