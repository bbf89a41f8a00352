package main

import (
	"context"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
)

// The Redis topologies, proven on real servers (issue 11): a Cluster with
// a failover, Sentinels with a failover, TLS with a private CA, and many
// worker processes against the fleet-wide limits. Each skips with one line
// where redis-server is absent.

// queueKey is a key of the asynq queue's slot (asynq tags its keys with
// the queue name: asynq:{QUEUE}:...).
const queueKey = "asynq:{" + tasks.Queue + "}:pending"

// fleet is a fleet whose every CVM can be patched.
func fleet(n int, seed uint64) sim.FleetOptions {
	return sim.FleetOptions{CVMs: n, Seed: seed, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}
}

// checkOnce checks that the rollout completed with every CVM succeeded,
// at the target at the simulator, with exactly one accepted PATCH each.
func checkOnce(t *testing.T, b *testutil.Bundle, id string, want int) map[string]store.CVMRecord {
	t.Helper()
	r := get(t, b, id)
	if r.State != store.RolloutCompleted || r.Counts[store.Succeeded] != want {
		t.Fatalf("rollout %s, counts %v: want completed with %d succeeded", r.State, r.Counts, want)
	}
	recs := b.Records(t, id)
	if len(recs) != want {
		t.Fatalf("%d CVM records, want %d", len(recs), want)
	}
	stats := b.Sim.Stats()
	bad := 0
	for cvm, rec := range recs {
		kms, _, _ := b.Sim.Config(cvm)
		if n := stats.PatchesPerCVM[cvm]; n != 1 || rec.State != store.Succeeded || len(kms) != 1 || kms[0] != "https://kms-new.example:8000" {
			if bad++; bad <= 5 {
				t.Errorf("%s: %s, %d accepted PATCHes, KMS %v", cvm, rec.State, n, kms)
			}
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d CVMs not at the target with exactly one PATCH", bad, want)
	}
	if stats.Patches != int64(want) {
		t.Fatalf("%d PATCHes accepted in all, want %d", stats.Patches, want)
	}
	return recs
}

// TestClusterFailoverMidRollout runs a staged 2,000-CVM rollout with 3
// worker processes on a Redis Cluster of 3 masters and 3 replicas, and
// fails over the master of the queue's slot (CLUSTER FAILOVER on its
// replica) mid-rollout: every CVM ends at the target with exactly one
// accepted PATCH, none lost.
func TestClusterFailoverMidRollout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node Redis Cluster and 3 worker processes")
	}
	cl := testutil.StartCluster(t)
	bin := buildWorker(t)
	rdb, err := redisconn.Open(context.Background(), cl.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	b := testutil.SetupOn(t, fleet(2000, 31), rdb, cl.URL())
	b.Sim.SetFaults(sim.Faults{Latency: 2 * time.Millisecond})
	began := time.Now()
	p := b.Apply(t, `name: cluster
selector: {all: true}
target: {kms_urls: ["https://kms-new.example:8000"]}
stages: [200, "100%"]
bake: 1s
retry: {max_attempts: 4, backoff: {base: 200ms, max: 1s}}
`)
	for range 3 {
		startWorker(t, bin, b, "--concurrency", "24")
	}
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.Counts[store.Succeeded] >= 700 })
	from, to := cl.FailoverSlot(t, queueKey)
	at := get(t, b, p.ID)
	t.Logf("failed the queue's master %s over to %s with %d of %d CVMs done", from, to, at.Counts[store.Succeeded], len(p.Items))
	if at.Counts[store.Succeeded] >= len(p.Items) {
		t.Fatal("the rollout was over before the failover")
	}
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	took := time.Since(began)
	checkOnce(t, b, p.ID, len(p.Items))
	t.Logf("Cluster rollout: %d CVMs in 2 stages, 3 workers, a failover: %s; %d PATCHes accepted, each CVM exactly once",
		len(p.Items), took.Round(100*time.Millisecond), b.Sim.Stats().Patches)
}
