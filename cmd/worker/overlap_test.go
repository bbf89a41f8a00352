package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// overlapA works the prod CVMs in two stages with a bake between them, so
// it is still active while B is applied.
const overlapA = `name: overlap-a
selector: {names: ["prod-*"]}
target: {kms_urls: ["https://kms-a.example:8000"]}
stages: [3, "100%"]
bake: 6s
`

const overlapB = `name: overlap-b
selector: {all: true}
target: {kms_urls: ["https://kms-b.example:8000"]}
`

// TestOverlapWithWorkerProcesses: with two worker processes driving
// rollout A (the prod CVMs), `apply` of B (every CVM) is refused with one
// line naming A and how many CVMs overlap, and B is not recorded;
// `apply --allow-overlap` records B with A's CVMs skipped. Both complete:
// every CVM is patched once, to A's target if A selected it, else to B's,
// and the controller gives every claim back and empties the active set.
func TestOverlapWithWorkerProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs two worker processes for about 15s")
	}
	alongside(t, false)
	bin := buildWorker(t)
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 60, Seed: 23, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	b.Sim.SetFaults(sim.Faults{Latency: 150 * time.Millisecond})
	fileA, fileB := testutil.WriteFile(t, overlapA), testutil.WriteFile(t, overlapB)
	planOf := func(file string) plan.Plan {
		var p plan.Plan
		if err := json.Unmarshal([]byte(rollout(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pa, pb := planOf(fileA), planOf(fileB)
	inA := map[string]bool{}
	for _, it := range pa.Items {
		if it.Action == plan.Patch {
			inA[it.CVMID] = true
		}
	}
	ids := b.Sim.IDs()
	if held := len(inA); held < 5 || held >= len(ids) || pb.Counts[plan.Patch] != len(ids) {
		t.Fatalf("setup: A patches %d, B patches %d of %d CVMs", held, pb.Counts[plan.Patch], len(ids))
	}
	held := len(inA)

	for range 2 {
		w := startWorker(t, bin, b)
		waitServer(t, b, w.Process.Pid)
	}
	t0 := time.Now()
	rollout(t, b, "apply", "-f", fileA, "--yes")
	waitCounts(t, b, pa.ID, time.Minute, func(r *store.Rollout) bool { return r.Counts[store.Succeeded] > 0 })

	// Without the flag: refused, one line, nothing recorded.
	_, errOut, err := rolloutErr(b, "apply", "-f", fileB, "--yes")
	if err == nil {
		t.Fatal("apply of B over active rollout A went ahead")
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, pa.ID) || !slices.Contains(strings.Fields(msg), strconv.Itoa(held)) {
		t.Fatalf("refusal %q (stderr %q); want one line naming %s and %d CVMs", msg, errOut, pa.ID, held)
	}
	if _, err := b.Store.Get(context.Background(), pb.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused rollout B: %v; want not recorded", err)
	}
	if r := get(t, b, pa.ID); r.State != store.RolloutRunning {
		t.Fatalf("setup: A is %s before B --allow-overlap; the test wants it running", r.State)
	}
	// A holds its CVMs (so the check after completion is not vacuous); the
	// refused B holds nothing and is not in the active set.
	ctx := context.Background()
	if n := b.RDB.HLen(ctx, store.OwnersKey).Val(); n != int64(held) {
		t.Fatalf("%d claims in %s while A runs; want A's %d", n, store.OwnersKey, held)
	}
	if active := b.RDB.HKeys(ctx, store.ActiveKey).Val(); !slices.Equal(active, []string{pa.ID}) {
		t.Fatalf("active set %v after B was refused; want only %s", active, pa.ID)
	}

	// With --allow-overlap: recorded, A's CVMs skipped.
	tB := time.Now()
	out := rollout(t, b, "apply", "-f", fileB, "--yes", "--allow-overlap")
	if want := fmt.Sprintf("Skipped %d CVMs held by active rollout %s", held, pa.ID); !strings.Contains(out, want) {
		t.Fatalf("apply --allow-overlap says:\n%s\nwant %q", out, want)
	}
	reason := "in active rollout " + pa.ID + " (apply --allow-overlap)"
	for id, rec := range b.Records(t, pb.ID) {
		if skipped := rec.State == store.Skipped; skipped != inA[id] || skipped && rec.Reason != reason {
			t.Errorf("B's %s: %s %q (in A: %v)", id, rec.State, rec.Reason, inA[id])
		}
	}

	// Both complete; note when each did.
	var aTook, bTook time.Duration
	for end := time.Now().Add(3 * time.Minute); aTook == 0 || bTook == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not both completed within 3m: A %+v, B %+v", get(t, b, pa.ID), get(t, b, pb.ID))
		}
		if aTook == 0 && get(t, b, pa.ID).State == store.RolloutCompleted {
			aTook = time.Since(t0)
		}
		if bTook == 0 && get(t, b, pb.ID).State == store.RolloutCompleted {
			bTook = time.Since(tB)
		}
	}
	done := time.Now()
	ra, rb := get(t, b, pa.ID), get(t, b, pb.ID)
	if ra.Counts[store.Succeeded] != held || rb.Counts[store.Succeeded] != len(ids)-held || rb.Counts[store.Skipped] != held {
		t.Errorf("counts: A %v, B %v; want A %d succeeded, B %d succeeded and %d skipped", ra.Counts, rb.Counts, held, len(ids)-held, held)
	}
	stats := b.Sim.Stats()
	for _, id := range ids {
		want := "https://kms-b.example:8000"
		if inA[id] {
			want = "https://kms-a.example:8000"
		}
		if kms, _, _ := b.Sim.Config(id); stats.PatchesPerCVM[id] != 1 || !slices.Equal(kms, []string{want}) {
			t.Errorf("%s (in A: %v): %d PATCHes, kms %v; want 1 and %s", id, inA[id], stats.PatchesPerCVM[id], kms, want)
		}
	}

	// The controller settles both: claims given back, active set empty.
	var owners, active int64
	for end := done.Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		owners, active = b.RDB.HLen(ctx, store.OwnersKey).Val(), b.RDB.HLen(ctx, store.ActiveKey).Val()
		if owners == 0 && active == 0 || time.Now().After(end) {
			break
		}
	}
	settled := time.Since(done)
	if owners != 0 || active != 0 {
		left, _ := b.RDB.HKeys(ctx, store.ActiveKey).Result()
		t.Errorf("5s after both completed: %d claims left in %s, active set %v", owners, store.OwnersKey, left)
	}
	t.Logf("A (%d CVMs, 2 stages, bake 6s) took %s; B (%d patched, %d skipped) took %s from its apply; settled %s after both completed",
		held, aTook.Round(10*time.Millisecond), len(ids)-held, held, bTook.Round(10*time.Millisecond), settled.Round(10*time.Millisecond))
}

// rolloutErr runs one rollout command in-process and returns its stdout,
// stderr and error, for the commands expected to fail.
func rolloutErr(b *testutil.Bundle, args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	vars := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	err = cli.Run(context.Background(), &cli.Env{Stdout: &o, Stderr: &e, Stdin: strings.NewReader(""), Getenv: func(k string) string { return vars[k] }}, args)
	return o.String(), e.String(), err
}
