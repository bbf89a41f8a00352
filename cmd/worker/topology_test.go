package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
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
func checkOnce(t *testing.T, b *testutil.Bundle, id string, want int) {
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
	alongside(t, true)
	cl := testutil.StartCluster(t)
	b, bin := onCluster(t, cl, fleet(2000, 31))
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
	// The read commands work on a Cluster too (asynq's inspector included).
	for _, args := range [][]string{{"status", p.ID}, {"report", p.ID, "-o", "json"}, {"events", p.ID}, {"list"}, {"workers"}} {
		if _, err := rolloutCmd(b.RedisURL, args...); err != nil {
			t.Errorf("rollout %v on the Cluster: %v", args, err)
		}
	}
	t.Logf("Cluster rollout: %d CVMs in 2 stages, 3 workers, a failover: %s; %d PATCHes accepted, each CVM exactly once",
		len(p.Items), took.Round(100*time.Millisecond), b.Sim.Stats().Patches)
}

// TestClusterTLS runs a rollout with 2 worker processes through a Redis
// Cluster whose 6 nodes speak only TLS (clients, replication and the
// cluster bus), with a private CA and a client certificate required:
// every CVM at the target, each PATCHed once; the read commands work; and
// a wrong CA in the cluster URL is one clear line.
func TestClusterTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 6-node TLS Redis Cluster and 2 worker processes")
	}
	alongside(t, true)
	f := testutil.GenTLS(t)
	cl := testutil.StartClusterTLS(t, f)
	b, bin := onCluster(t, cl, fleet(500, 43))
	p := b.Apply(t, "name: cluster-tls\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nstages: [50, \"100%\"]\n")
	for range 2 {
		startWorker(t, bin, b, "--concurrency", "16")
	}
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	checkOnce(t, b, p.ID, len(p.Items))
	for _, args := range [][]string{{"status", p.ID}, {"report", p.ID, "-o", "json"}, {"workers"}} {
		if _, err := rolloutCmd(b.RedisURL, args...); err != nil {
			t.Errorf("rollout %v on the TLS Cluster: %v", args, err)
		}
	}
	wrong := strings.Replace(cl.URL(), "tls_ca="+f.CA, "tls_ca="+f.OtherCA, 1)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PHALA_CLOUD_API_KEY="+b.Key, "PHALA_CLOUD_API_PREFIX="+b.SimURL, "REDIS_URL="+wrong)
	out, err := cmd.CombinedOutput()
	line := strings.TrimSpace(string(out))
	t.Logf("wrong CA on the Cluster: %s", line)
	if err == nil || strings.Contains(line, "\n") || !strings.Contains(line, "certificate signed by unknown authority (check tls_ca in REDIS_URL)") {
		t.Errorf("worker with a wrong CA: %v, said:\n%s", err, line)
	}
}

// onCluster is a bundle on cl, opened through its URL as the workers
// open it, and the worker binary.
func onCluster(t *testing.T, cl *testutil.Cluster, f sim.FleetOptions) (*testutil.Bundle, string) {
	t.Helper()
	bin := buildWorker(t)
	rdb, err := redisconn.Open(context.Background(), cl.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return testutil.SetupOn(t, f, rdb, cl.URL()), bin
}

// TestTLSPrivateCA runs a rollout with a worker process through a
// redis-server that speaks TLS only and wants client certificates, from a
// CA the test made: REDIS_URL names the CA, the certificate and its key.
// The wrong CA, or no client certificate, is one clear line.
func TestTLSPrivateCA(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server and a worker process")
	}
	alongside(t, true)
	testutil.NeedTLS(t)
	f := testutil.GenTLS(t)
	port := testutil.FreePort(t)
	testutil.StartRedisConf(t, "", 0, "--tls-port", strconv.Itoa(port), "--tls-cert-file", f.ServerCert, "--tls-key-file", f.ServerKey,
		"--tls-ca-cert-file", f.CA, "--tls-auth-clients", "yes")
	base := fmt.Sprintf("rediss://127.0.0.1:%d/0", port)
	url := base + "?tls_ca=" + f.CA + "&tls_cert=" + f.ClientCert + "&tls_key=" + f.ClientKey
	rdb, err := redisconn.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	bin := buildWorker(t)
	b := testutil.SetupOn(t, fleet(200, 41), rdb, url)
	p := b.Apply(t, "name: tls\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	startWorker(t, bin, b)
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	checkOnce(t, b, p.ID, len(p.Items))

	for _, c := range []struct{ url, want string }{
		{base + "?tls_ca=" + f.OtherCA + "&tls_cert=" + f.ClientCert + "&tls_key=" + f.ClientKey,
			"TLS: certificate signed by unknown authority (check tls_ca in REDIS_URL)"},
		{base + "?tls_ca=" + f.CA, "check tls_cert and tls_key in REDIS_URL)"},
		{fmt.Sprintf("redis://127.0.0.1:%d/0?tls_ca=%s", port, f.CA), "need rediss://"},
	} {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "PHALA_CLOUD_API_KEY="+b.Key, "PHALA_CLOUD_API_PREFIX="+b.SimURL, "REDIS_URL="+c.url)
		out, err := cmd.CombinedOutput()
		line := strings.TrimSpace(string(out))
		t.Logf("wrong TLS setup: %s", line)
		if err == nil || strings.Count(line, "\n") > 0 || !strings.Contains(line, c.want) {
			t.Errorf("worker with %s: %v, said:\n%s\nwant one line with %q", c.url, err, line, c.want)
		}
	}
}

// TestSentinelFailoverMidRollout runs a rollout with 2 worker processes
// through a Sentinel, and forces a failover (SENTINEL FAILOVER) mid-way,
// the planned kind (switchover): every CVM ends at the target, patched
// exactly once, none lost. (An unplanned one loses the writes of the last
// moment, Redis's replication being asynchronous: docs/redis.md.)
func TestSentinelFailoverMidRollout(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-servers, a Sentinel and 2 worker processes")
	}
	alongside(t, true)
	sentinelRollout(t, true)
}

// TestSentinelUnplannedFailover is SENTINEL FAILOVER with no pause first:
// the old master takes writes until the clients move, and loses them
// (Redis replicates asynchronously). What the tool promises then: the
// rollout completes (the lost tasks come back through asynq's lease
// recovery, a minute or two), every CVM at the target; a CVM whose success
// record was lost reads unchanged, and one whose task was handed out again
// while its first try still ran may get the same PATCH twice, never more.
// It takes minutes: ROLLOUT_SLOW_TESTS=1 runs it.
func TestSentinelUnplannedFailover(t *testing.T) {
	alongside(t, true)
	if os.Getenv("ROLLOUT_SLOW_TESTS") == "" {
		t.Skip("waits minutes for asynq's lease recovery; ROLLOUT_SLOW_TESTS=1 runs it")
	}
	sentinelRollout(t, false)
}

// sentinelRollout runs a rollout through a Sentinel and fails over
// mid-way, planned (switchover) or not.
func sentinelRollout(t *testing.T, planned bool) {
	began := time.Now()
	master := testutil.StartRedis(t)
	replica := testutil.StartRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	sport := testutil.FreePort(t)
	conf := filepath.Join(t.TempDir(), "sentinel.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("sentinel monitor main 127.0.0.1 %d 1\nsentinel down-after-milliseconds main 3000\nsentinel failover-timeout main 10000\n", master.Port)), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.StartRedisConf(t, conf, sport, "--sentinel")
	ctx := context.Background()
	sen := redis.NewSentinelClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", sport)})
	defer sen.Close()
	url := fmt.Sprintf("redis://127.0.0.1:%d/0?master_name=main", sport)
	rdb, err := redisconn.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	bin := buildWorker(t)
	b := testutil.SetupOn(t, fleet(600, 51), rdb, url)
	b.Sim.SetFaults(sim.Faults{Latency: 5 * time.Millisecond})
	p := b.Apply(t, "name: sentinel\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nrate: {per_second: 150}\nretry: {max_attempts: 4, backoff: {base: 200ms, max: 1s}}\n")
	for range 2 {
		startWorker(t, bin, b, "--concurrency", "16")
	}
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.Counts[store.Succeeded] >= 150 })
	// A forced failover needs a replica the Sentinel knows and likes (its
	// INFO says the link is up: a few seconds after the Sentinel starts).
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		reps, err := sen.Replicas(ctx, "main").Result()
		if err == nil && len(reps) == 1 && reps[0]["master-link-status"] == "ok" {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the Sentinel does not see the replica: %v %v", reps, err)
		}
	}
	if planned {
		switchover(t, master, replica, sen)
	} else {
		failover(t, replica, sen)
	}
	at := get(t, b, p.ID)
	t.Logf("the Sentinel failed over to %s with %d of %d CVMs done", replica.Addr(), at.Counts[store.Succeeded], len(p.Items))
	if at.Counts[store.Succeeded] >= len(p.Items) {
		t.Fatal("the rollout was over before the failover")
	}
	if planned {
		// Normally done in seconds. A task whose handler failed during the
		// switch, and whose move to asynq's retry set failed too, waits for
		// asynq's lease recovery (up to 2 minutes): say so, then wait.
		done := func(r *store.Rollout) bool { return r.State == store.RolloutCompleted }
		if !waitFor(b, p.ID, 30*time.Second, done) {
			t.Logf("not completed 30s after the failover (%v); waiting for asynq's lease recovery. Stuck: %s", get(t, b, p.ID).Counts, stuck(t, b, p.ID))
		}
		waitCounts(t, b, p.ID, 2*time.Minute, done)
		checkOnce(t, b, p.ID, len(p.Items))
		return
	}
	r := waitCounts(t, b, p.ID, 5*time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	t.Logf("completed %s after the start: %v", time.Since(began).Round(time.Second), r.Counts)
	stats := b.Sim.Stats()
	twice := 0
	for cvm, rec := range b.Records(t, p.ID) {
		kms, _, _ := b.Sim.Config(cvm)
		n := stats.PatchesPerCVM[cvm]
		if n < 1 || n > 2 || len(kms) != 1 || kms[0] != "https://kms-new.example:8000" || !rec.State.Terminal() {
			t.Errorf("%s: %s, %d accepted PATCHes, KMS %v", cvm, rec.State, n, kms)
		}
		if n == 2 {
			twice++
		}
	}
	t.Logf("%d CVMs got their PATCH twice", twice)
}

// failover is SENTINEL FAILOVER as it comes, until the Sentinel names the
// new master.
func failover(t *testing.T, replica *testutil.Server, sen *redis.SentinelClient) {
	t.Helper()
	ctx := context.Background()
	if err := sen.Failover(ctx, "main").Err(); err != nil {
		t.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if addr, err := sen.GetMasterAddrByName(ctx, "main").Result(); err == nil && addr[1] == strconv.Itoa(replica.Port) {
			return
		}
		if time.Now().After(end) {
			t.Fatal("no failover 30s after SENTINEL FAILOVER")
		}
	}
}

// switchover is a planned Sentinel failover that loses no write, the way
// Redis's CLIENT PAUSE documents it: writes pause on the master, the
// replica catches up, SENTINEL FAILOVER promotes it, the old master is
// made its replica at once (what the Sentinel does a few seconds later),
// and the writes it held fail with READONLY when the pause ends: their
// callers retry them on the new master. It returns once the Sentinel names
// the new master.
func switchover(t *testing.T, master, replica *testutil.Server, sen *redis.SentinelClient) {
	t.Helper()
	ctx := context.Background()
	m := redis.NewClient(&redis.Options{Addr: master.Addr(), MaxRetries: -1})
	defer m.Close()
	r := redis.NewClient(&redis.Options{Addr: replica.Addr(), MaxRetries: -1})
	defer r.Close()
	if err := m.Do(ctx, "CLIENT", "PAUSE", "20000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	offset := func(c *redis.Client, field string) string {
		info, _ := c.Info(ctx, "replication").Result()
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				return v
			}
		}
		return ""
	}
	for end := time.Now().Add(10 * time.Second); offset(m, "master_repl_offset") != offset(r, "slave_repl_offset"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the replica did not catch up with the paused master")
		}
	}
	began := time.Now()
	if err := sen.Failover(ctx, "main").Err(); err != nil {
		t.Fatalf("SENTINEL FAILOVER: %v", err)
	}
	defer func() { t.Logf("SENTINEL FAILOVER took %s", time.Since(began).Round(time.Millisecond)) }()
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		addr, err := sen.GetMasterAddrByName(ctx, "main").Result()
		if err == nil && addr[1] == strconv.Itoa(replica.Port) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no failover 30s after SENTINEL FAILOVER (master %v)", addr)
		}
	}
	if err := m.Do(ctx, "REPLICAOF", "127.0.0.1", strconv.Itoa(replica.Port)).Err(); err != nil {
		t.Fatal(err)
	}
	if err := m.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
}

// TestManyWorkersHoldTheFleetLimits runs a 5,000-CVM rollout with 4 worker
// processes on a real redis-server, at 500 API calls/s and 40 CVMs in
// flight across all of them: every CVM is patched exactly once, the
// simulator never sees more than 40 calls at once nor more calls in a
// second than the rate and its burst allow, and report says which worker
// did each CVM (all 4 did some).
func TestManyWorkersHoldTheFleetLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server and 4 worker processes")
	}
	alongside(t, true)
	srv := testutil.StartRedis(t)
	url := "redis://" + srv.Addr() + "/0"
	rdb, err := redisconn.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	bin := buildWorker(t)
	b := testutil.SetupOn(t, fleet(5000, 61), rdb, url)
	const perSecond, inFlight = 1000, 40
	p := b.Apply(t, fmt.Sprintf(`name: many
selector: {all: true}
target: {kms_urls: ["https://kms-new.example:8000"]}
rate: {per_second: %d, max_in_flight: %d}
retry: {max_attempts: 4, backoff: {base: 200ms, max: 1s}}
`, perSecond, inFlight))
	// Each call takes 20ms: 40 CVMs in flight could make 2,000 calls/s,
	// so both limits are busy.
	b.Sim.SetFaults(sim.Faults{Latency: 20 * time.Millisecond})
	b.Sim.ResetPeaks() // the plan's reads are not the rollout's
	began := time.Now()
	names := map[string]bool{}
	host, _ := os.Hostname()
	for range 4 {
		w := startWorker(t, bin, b, "--concurrency", "30")
		names[fmt.Sprintf("%s/%d", host, w.Process.Pid)] = true
	}
	waitCounts(t, b, p.ID, 90*time.Second, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	took := time.Since(began)
	checkOnce(t, b, p.ID, len(p.Items))
	st := b.Sim.Stats()
	burst := int64(perSecond / 10) // ratelimit's default burst
	t.Logf("%d CVMs, 4 workers: %s; at the simulator at most %d calls at once (%d PATCHes), at most %d calls in a second",
		len(p.Items), took.Round(100*time.Millisecond), st.MaxConcurrent, st.MaxConcurrentPatches, st.MaxPerSecond())
	if st.MaxConcurrent > inFlight {
		t.Errorf("%d calls at once at the simulator: max_in_flight %d was not held", st.MaxConcurrent, inFlight)
	}
	if st.MaxPerSecond() > perSecond+burst {
		t.Errorf("%d calls in one second at the simulator: per_second %d (burst %d) was not held", st.MaxPerSecond(), perSecond, burst)
	}
	if st.MaxConcurrent < inFlight/4 || st.MaxPerSecond() < perSecond/4 {
		t.Errorf("the limits were never approached (%d at once, %d/s): the test proves nothing", st.MaxConcurrent, st.MaxPerSecond())
	}

	// report -o csv: the worker column names the 4 processes, each with
	// some CVMs.
	out, err := rolloutCmd(url, "report", p.ID, "-o", "csv")
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(strings.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	col := slices.Index(rows[0], "worker")
	by := map[string]int{}
	for _, row := range rows[1:] {
		by[row[col]]++
	}
	for w, n := range by {
		if !names[w] {
			t.Errorf("report names worker %q (%d CVMs), not one of %v", w, n, names)
		}
	}
	if len(by) != 4 || len(rows)-1 != len(p.Items) {
		t.Errorf("report: %d rows, by worker %v: want %d rows from 4 workers", len(rows)-1, by, len(p.Items))
	}
	t.Logf("CVMs by worker (report's worker column): %v", by)
}

// rolloutCmd runs a rollout command in-process on the Redis at url and
// returns what it printed.
func rolloutCmd(url string, args ...string) (string, error) {
	var out strings.Builder
	env := &cli.Env{Stdout: &out, Stderr: os.Stderr, Stdin: strings.NewReader(""), Getenv: func(k string) string {
		if k == "REDIS_URL" {
			return url
		}
		return ""
	}}
	err := cli.Run(context.Background(), env, args)
	return out.String(), err
}

// waitFor polls until cond holds or limit passes, and says which.
func waitFor(b *testutil.Bundle, id string, limit time.Duration, cond func(*store.Rollout) bool) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if r, err := b.Store.Get(context.Background(), id); err == nil && cond(r) {
			return true
		}
	}
	return false
}

// stuck names the rollout's running CVMs and what asynq says of their
// tasks, for a test that waits too long.
func stuck(t *testing.T, b *testutil.Bundle, id string) string {
	insp := asynq.NewInspectorFromRedisClient(b.RDB)
	var out []string
	for cvm, rec := range b.Records(t, id) {
		if rec.State != store.Running && rec.State != store.Pending {
			continue
		}
		info, err := insp.GetTaskInfo(tasks.Queue, tasks.TaskID(tasks.Payload{Rollout: id, CVM: cvm, Gen: rec.Gen}))
		if err != nil {
			out = append(out, fmt.Sprintf("%s %s (task: %v)", cvm, rec.State, err))
			continue
		}
		out = append(out, fmt.Sprintf("%s %s (task %s, retried %d, last error %q)", cvm, rec.State, info.State, info.Retried, info.LastErr))
	}
	return strings.Join(out, "; ")
}
