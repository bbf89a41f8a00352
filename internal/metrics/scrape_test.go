package metrics_test

import (
	"testing"

	"github.com/phalafleet/rollout/internal/metrics"
	dto "github.com/prometheus/client_model/go"
)

// sample is one series of a gathered family.
type sample struct {
	labels map[string]string
	v      float64
}

func gather(t *testing.T, m *metrics.Metrics) []*dto.MetricFamily {
	t.Helper()
	fs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

// families is name -> series, with counters and gauges' values.
func families(fs []*dto.MetricFamily) map[string][]sample {
	out := map[string][]sample{}
	for _, f := range fs {
		for _, m := range f.GetMetric() {
			s := sample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Gauge != nil:
				s.v = m.Gauge.GetValue()
			case m.Counter != nil:
				s.v = m.Counter.GetValue()
			}
			out[f.GetName()] = append(out[f.GetName()], s)
		}
	}
	return out
}
