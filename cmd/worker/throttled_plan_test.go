package main

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

const throttledFile = `name: throttled
selector: {names: ["prod-*", "staging-*"]}
target: {kms_urls: ["https://kms-new.example:8000"], gateway_urls: ["https://gw-new.example:8000"]}
stages: [5, "100%"]
retry: {max_attempts: 3, backoff: {base: 1s, max: 2s}}
rate: {per_second: 40}
`

// rollout runs one rollout command in-process against b's simulator and
// Redis, and returns its stdout.
func rollout(t *testing.T, b *testutil.Bundle, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	e := &cli.Env{Stdout: &out, Stderr: &errOut, Stdin: strings.NewReader(""), Getenv: func(k string) string { return env[k] }}
	if err := cli.Run(context.Background(), e, args); err != nil {
		t.Fatalf("rollout %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String()
}

// TestThrottledPlanApplies: against an API that throttles (429 with
// Retry-After), `plan` gives the hash of the calm plan, `apply
// --plan-hash` accepts it, and a worker process takes every CVM to patch
// to the target with one PATCH each; none is left unknown. The file's rate
// (40/s) is above the API's limit (25/s), so the plan's reads, paced by it,
// and the worker's calls are throttled until the adaptive rate finds the
// limit.
func TestThrottledPlanApplies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker process against a throttling API")
	}
	alongside(t, false)
	bin := buildWorker(t)
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 100, Seed: 17, AtTargetShare: 0.1,
		AtTargetKMS: []string{"https://kms-new.example:8000"}, AtTargetGateway: []string{"https://gw-new.example:8000"}})
	file := testutil.WriteFile(t, throttledFile)
	planJSON := func() plan.Plan {
		var p plan.Plan
		if err := json.Unmarshal([]byte(rollout(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	calm := planJSON()
	t0 := time.Now()

	b.Sim.SetFaults(sim.Faults{RateLimit: 25, RateBurst: 2})
	p := planJSON()
	if b.Sim.Stats().Throttled == 0 {
		t.Fatal("the simulator throttled no read of the plan")
	}
	if p.Hash != calm.Hash || p.Counts[plan.Unknown] != 0 {
		t.Fatalf("throttled plan %s %v, calm plan %s %v", p.Hash, p.Counts, calm.Hash, calm.Counts)
	}
	if p.Counts[plan.Patch] < 20 || p.Counts[plan.Unchanged] == 0 {
		t.Fatalf("counts %v: the fleet tests too little", p.Counts)
	}

	throttled := b.Sim.Stats().Throttled
	t.Logf("plan %s", time.Since(t0))
	rollout(t, b, "apply", "-f", file, "--yes", "--plan-hash", p.Hash)
	if b.Sim.Stats().Throttled == throttled {
		t.Error("apply's plan was not throttled")
	}
	t.Logf("apply %s", time.Since(t0))
	startWorker(t, bin, b)
	r := waitCounts(t, b, p.ID, 2*time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	if r.Counts[store.Succeeded] != p.Counts[plan.Patch] || r.Counts[store.Unchanged] != p.Counts[plan.Unchanged] ||
		r.Counts[store.Skipped] != p.Counts[plan.Skip] {
		t.Errorf("rollout counts %v, plan counts %v", r.Counts, p.Counts)
	}
	t.Logf("done %s", time.Since(t0))
	stats := b.Sim.Stats()
	for _, it := range p.Items {
		n := stats.PatchesPerCVM[it.CVMID]
		kms, gw, _ := b.Sim.Config(it.CVMID)
		atTarget := slices.Equal(kms, []string{"https://kms-new.example:8000"}) && slices.Equal(gw, []string{"https://gw-new.example:8000"})
		switch it.Action {
		case plan.Patch:
			if n != 1 || !atTarget {
				t.Errorf("%s: %d PATCHes, config %v %v", it.CVMID, n, kms, gw)
			}
		case plan.Unchanged:
			if n != 0 || !atTarget {
				t.Errorf("unchanged %s: %d PATCHes, config %v %v", it.CVMID, n, kms, gw)
			}
		case plan.Skip:
			if n != 0 {
				t.Errorf("skipped %s: %d PATCHes", it.CVMID, n)
			}
		default:
			t.Errorf("%s: action %s", it.CVMID, it.Action)
		}
	}
	if stats.Throttled == throttled {
		t.Error("the simulator never throttled")
	}
}
