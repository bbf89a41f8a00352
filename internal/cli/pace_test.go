package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestStatusShowsTheAdaptiveRate: status names the rollout's adaptive rate
// and the reason of its last change, in the table and in -o json's "rate".
func TestStatusShowsTheAdaptiveRate(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 5, Seed: 3})
	file := testutil.WriteFile(t, fmt.Sprintf("name: paced\nselector: {all: true}\ntarget: {kms_urls: [%q]}\nrate: {per_second: 40}\n", newKMS))
	var a struct{ ID string }
	if err := json.Unmarshal([]byte(mustRun(t, b, "apply", "-f", file, "--yes", "-o", "json")), &a); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, b, "status", a.ID); !strings.Contains(out, "Rate:     40 req/s (the file's)") {
		t.Fatalf("before any cut, status says:\n%s", out)
	}
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	why := "cut: 429 Too Many Requests: 12 of 80 answers"
	if err := store.NewLimits(b.RDB).PaceSet(context.Background(), a.ID, store.PaceRecord{Rate: 17.5, Ssthresh: 20, Reason: why, ChangedAt: at}, false); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, b, "status", a.ID); !strings.Contains(out, "Rate:     17.5 req/s adaptive (file 40): "+why) {
		t.Fatalf("status says:\n%s", out)
	}
	var s struct {
		Rate struct {
			PerSecond         float64   `json:"per_second"`
			AdaptivePerSecond float64   `json:"adaptive_per_second"`
			Reason            string    `json:"reason"`
			ChangedAt         time.Time `json:"changed_at"`
		} `json:"rate"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, b, "status", a.ID, "-o", "json")), &s); err != nil {
		t.Fatal(err)
	}
	if r := s.Rate; r.PerSecond != 40 || r.AdaptivePerSecond != 17.5 || r.Reason != why || !r.ChangedAt.Equal(at) {
		t.Fatalf("status -o json rate: %+v", r)
	}
}
