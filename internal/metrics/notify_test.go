package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestNotified counts delivery attempts by result.
func TestNotified(t *testing.T) {
	m := New(Options{})
	m.Notified("delivered")
	m.Notified("delivered")
	m.Notified("failed")
	if d, f := testutil.ToFloat64(m.notifications.WithLabelValues("delivered")), testutil.ToFloat64(m.notifications.WithLabelValues("failed")); d != 2 || f != 1 {
		t.Fatalf("delivered %v, failed %v", d, f)
	}
}
