package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestPlanUnknownRows: a CVM whose config read keeps answering 503 is an
// unknown row: in the summary line and -o json counts, not patched, and
// recorded skipped by apply, which queues only the CVMs to patch.
func TestPlanUnknownRows(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 60, Seed: 31, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: unknown\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	victim := b.Sim.IDs()[7]
	b.Sim.FailRead(victim, 503)

	var p plan.Plan
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", file, "-o", "json", "--read-timeout", "1s")), &p); err != nil {
		t.Fatal(err)
	}
	if p.Counts[plan.Unknown] != 1 || p.Counts[plan.Patch] != 59 {
		t.Fatalf("counts %v, want 59 patch and 1 unknown", p.Counts)
	}
	out := mustRun(t, b, "plan", "-f", file, "--read-timeout", "1s")
	if !strings.Contains(out, "\nPlan: 59 to patch, 0 unchanged, 0 skipped, 1 unknown (60 selected). Plan hash "+p.Hash+".\n") {
		t.Errorf("summary (the same hash each run):\n%s", out)
	}
	if !strings.Contains(out, victim+"  ") || !strings.Contains(out, "unknown  current config unreadable: no usable answer from the API for 1s (read timeout): GET /cvms/"+victim+"/network-config: HTTP 503") {
		t.Errorf("no unknown row for %s:\n%s", victim, out)
	}

	out = mustRun(t, b, "apply", "-f", file, "--read-timeout", "1s", "--yes", "--plan-hash", p.Hash)
	if !strings.Contains(out, "59 tasks queued now") {
		t.Errorf("apply:\n%s", out)
	}
	rec := b.Records(t, p.ID)[victim]
	if rec.State != store.Skipped || !strings.HasPrefix(rec.Reason, "config unreadable at plan time: no usable answer from the API for 1s (read timeout): GET /cvms/") {
		t.Errorf("record of the unknown CVM: %+v", rec)
	}
}

// TestPlanWarnsOnEmptySelection: a selector that matches nothing plans
// (0 selected) with one warning line on stderr.
func TestPlanWarnsOnEmptySelection(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 20, Seed: 3})
	file := testutil.WriteFile(t, fmt.Sprintf("name: none\nselector: {names: [\"nothing-*\"]}\ntarget: {kms_urls: [%q]}\n", newKMS))
	out, errOut, err := run(t, b, "plan", "-f", file)
	if err != nil {
		t.Fatal(err)
	}
	if errOut != "warning: the selector matches no CVM\n" {
		t.Errorf("stderr = %q", errOut)
	}
	if !strings.Contains(out, "Plan: 0 to patch, 0 unchanged, 0 skipped, 0 unknown (0 selected).") {
		t.Errorf("stdout:\n%s", out)
	}
	if _, errOut, _ := run(t, b, "plan", "-f", file, "-o", "json"); errOut != "warning: the selector matches no CVM\n" {
		t.Errorf("-o json stderr = %q", errOut)
	}
}

// TestPlanOfDownAPIEndsWithinReadTimeout: the whole API answers 503: plan
// and apply end with one error line once --read-timeout has passed.
func TestPlanOfDownAPIEndsWithinReadTimeout(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 20, Seed: 3})
	b.Sim.SetFaults(sim.Faults{Down: true})
	file := testutil.WriteFile(t, fmt.Sprintf("name: down\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	for _, cmd := range [][]string{{"plan"}, {"apply", "--yes"}} {
		start := time.Now()
		_, _, err := run(t, b, append(cmd, "-f", file, "--read-timeout", "1500ms")...)
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s took %s with --read-timeout 1500ms", cmd, took)
		}
		if err == nil || strings.Contains(err.Error(), "\n") ||
			!strings.HasPrefix(err.Error(), "listing CVMs: no usable answer from the API for 1.5s (read timeout): GET /cvms/paginated: HTTP 503") {
			t.Errorf("%s: err = %v", cmd, err)
		}
	}
	if _, _, err := run(t, b, "plan", "-f", file, "--read-timeout", "0s"); err == nil || err.Error() != "--read-timeout must be positive" {
		t.Errorf("--read-timeout 0s: err = %v", err)
	}
}
