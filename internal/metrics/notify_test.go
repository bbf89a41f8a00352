package metrics

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
)

// TestNotified counts delivery attempts by result.
func TestNotified(t *testing.T) {
	m := New(Options{})
	m.Notified("delivered")
	m.Notified("delivered")
	m.Notified("failed")
	count := func(result string) float64 {
		var pb dto.Metric
		if err := m.notifications.WithLabelValues(result).Write(&pb); err != nil {
			t.Fatal(err)
		}
		return pb.GetCounter().GetValue()
	}
	if d, f := count("delivered"), count("failed"); d != 2 || f != 1 {
		t.Fatalf("delivered %v, failed %v", d, f)
	}
}
