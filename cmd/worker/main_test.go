package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/worker"
	"github.com/redis/go-redis/v9"
)

const file = `name: crash
selector: {all: true}
target: {kms_urls: ["https://kms-new.example:8000"], gateway_urls: ["https://gw-new.example:8000"]}
stages: [15, "100%"]
bake: 3s
retry: {max_attempts: 4, backoff: {base: 1s, max: 2s}}
`

// buildWorker compiles this command once per test.
// TestMain lets up to 4 process tests run at once unless -parallel says
// otherwise: they mostly wait (two of them on asynq's lease recovery, about
// 80 s each), so 4 at once on 2 cores finish in about the time of the
// longest two instead of their sum.
func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.parallel"); f != nil && f.Value.String() == strconv.Itoa(runtime.GOMAXPROCS(0)) {
		f.Value.Set(strconv.Itoa(max(4, runtime.GOMAXPROCS(0))))
	}
	os.Exit(m.Run())
}

// alongside lets a process test run beside the others (t.Parallel, at
// most -parallel, GOMAXPROCS by default, at once) when nothing it uses is
// shared: without REDIS_URL each test has its own miniredis; with it, the
// tests on that Redis take turns (each FLUSHes its database) and only those
// on servers of their own (ownServer) run side by side. Most of these
// tests wait on timers (asynq's lease recovery, bakes, failovers), so side
// by side they cost CI little CPU and much less time.
func alongside(t *testing.T, ownServer bool) {
	t.Helper()
	if ownServer || os.Getenv("REDIS_URL") == "" {
		t.Parallel()
	}
}

// setupWaiting is testutil.Setup for the two tests that wait on asynq's
// lease recovery (about 80 s each, idle): with REDIS_URL set and
// redis-server installed, each gets a private redis-server (a real Redis,
// which is what REDIS_URL asks for) and runs beside the others; otherwise
// it is alongside(t, false) and testutil.Setup.
func setupWaiting(t *testing.T, fleet sim.FleetOptions) *testutil.Bundle {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil || os.Getenv("REDIS_URL") == "" {
		alongside(t, false)
		return testutil.Setup(t, fleet)
	}
	t.Parallel()
	url := "redis://" + testutil.StartRedis(t).Addr() + "/0"
	rdb, err := redisconn.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	return testutil.SetupOn(t, fleet, rdb, url)
}

func buildWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "worker")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startWorker starts a worker process on b's Redis and simulator; extra
// flags come after (and override) the defaults.
func startWorker(t *testing.T, bin string, b *testutil.Bundle, extra ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--concurrency", "8", "--shutdown-timeout", "10s"}, extra...)...)
	cmd.Env = append(os.Environ(), "PHALA_CLOUD_API_KEY="+b.Key, "PHALA_CLOUD_API_PREFIX="+b.SimURL, "REDIS_URL="+b.RedisURL)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func waitCounts(t *testing.T, b *testutil.Bundle, id string, limit time.Duration, cond func(*store.Rollout) bool) *store.Rollout {
	t.Helper()
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if r, err := b.Store.Get(context.Background(), id); err == nil && cond(r) {
			return r
		}
	}
	r, _ := b.Store.Get(context.Background(), id)
	t.Fatalf("timed out after %s: %+v", limit, r)
	return nil
}

// TestKilledWorkerLosesNothing kills a worker process with SIGKILL while
// PATCHes are in flight, starts another, and checks the rollout finishes
// with every CVM succeeded once and none patched more than its attempts
// allow. asynq hands a dead worker's tasks back after its lease (30s) and
// the recoverer's next pass, so this takes a minute or two of real time.
func TestKilledWorkerLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for asynq's lease recovery (about 90s)")
	}
	bin := buildWorker(t)
	b := setupWaiting(t, sim.FleetOptions{CVMs: 50, Seed: 4, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	b.Sim.SetFaults(sim.Faults{Latency: 300 * time.Millisecond})
	p := b.Apply(t, file)

	first := startWorker(t, bin, b)
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool {
		return r.Counts[store.Succeeded] >= 5 && r.Counts[store.Running] > 0
	})
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	killedAt := get(t, b, p.ID)
	if killedAt.Counts[store.Running] == 0 {
		t.Fatal("no CVM was in flight when the worker died")
	}

	second := startWorker(t, bin, b)
	r := waitCounts(t, b, p.ID, 4*time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	if r.Counts[store.Succeeded] != len(p.Items) {
		t.Fatalf("counts %v, want all %d succeeded", r.Counts, len(p.Items))
	}
	stats := b.Sim.Stats()
	for id, rec := range b.Records(t, p.ID) {
		if n := stats.PatchesPerCVM[id]; n < 1 || n > 4 || rec.Attempts > 4 {
			t.Errorf("%s: %d PATCHes, %d attempts (max 4)", id, n, rec.Attempts)
		}
		kms, gw, _ := b.Sim.Config(id)
		if len(kms) != 1 || len(gw) != 1 || len(rec.PrevKMS) != 1 || rec.PrevKMS[0] == kms[0] {
			t.Errorf("%s: config %v %v, before-image %v", id, kms, gw, rec.PrevKMS)
		}
	}
	// SIGTERM drains and exits cleanly.
	second.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("worker did not stop within 20s of SIGTERM")
	}
}

func get(t *testing.T, b *testutil.Bundle, id string) *store.Rollout {
	t.Helper()
	// Retried for a while: right after a failover the test's own client
	// may still hold a connection the old master closed (CI failed once on
	// "use of closed network connection" just after a Sentinel switchover).
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		r, err := b.Store.Get(context.Background(), id)
		if err == nil {
			return r
		}
		if time.Now().After(end) {
			t.Fatal(err)
		}
	}
}

// TestRedisRestartWithPersistence crashes a redis-server (appendonly,
// fsync always) mid-rollout and starts it again on the same data: the
// in-process workers reconnect and every CVM ends succeeded.
func TestRedisRestartWithPersistence(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server twice")
	}
	server, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed")
	}
	dir := t.TempDir()
	port := testutil.FreePort(t)
	start := func() *exec.Cmd {
		cmd := exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--appendonly", "yes", "--appendfsync", "always", "--save", "")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for range 100 {
			c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
			err := c.Ping(context.Background()).Err()
			c.Close()
			if err == nil {
				return cmd
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatal("redis-server did not start")
		return nil
	}
	rs := start()
	t.Setenv("REDIS_URL", fmt.Sprintf("redis://127.0.0.1:%d/0", port))
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 60, Seed: 8, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	b.Sim.SetFaults(sim.Faults{Latency: 100 * time.Millisecond})
	p := b.Apply(t, "name: redis\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx, b.RDB, worker.Config{Concurrency: 4, API: b.API, ControllerInterval: 100 * time.Millisecond, ShutdownTimeout: 5 * time.Second})
	}()
	defer func() { cancel(); <-done }()
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.Counts[store.Succeeded] >= 10 })
	rs.Process.Signal(syscall.SIGKILL)
	rs.Wait()
	time.Sleep(2 * time.Second)
	start()
	r := waitCounts(t, b, p.ID, 4*time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	if r.Counts[store.Succeeded] != len(p.Items) {
		t.Fatalf("counts %v, want all %d succeeded", r.Counts, len(p.Items))
	}
	for id := range b.Records(t, p.ID) {
		if n := b.Sim.Stats().PatchesPerCVM[id]; n < 1 || n > 8 {
			t.Errorf("%s patched %d times", id, n)
		}
	}
}

// TestAllWorkersKilledDuringBake: the only worker dies with SIGKILL while a
// stage bakes; a new one picks the rollout up from Redis: the next stage
// starts no earlier than the bake allows, and the rollout completes.
func TestAllWorkersKilledDuringBake(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes for about 20s")
	}
	alongside(t, false)
	bin := buildWorker(t)
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 30, Seed: 14, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	p := b.Apply(t, "name: bake\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nstages: [5, \"100%\"]\nbake: 8s\n")
	first := startWorker(t, bin, b)
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return strings.Contains(r.Reason, "baking until") })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	killed := time.Now()
	startWorker(t, bin, b)
	r := waitCounts(t, b, p.ID, 2*time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	if r.Counts[store.Succeeded] != len(p.Items) {
		t.Fatalf("counts %v", r.Counts)
	}
	var stage1Done, stage2Start time.Time
	for _, rec := range b.Records(t, p.ID) {
		if rec.Stage == 0 && rec.FinishedAt.After(stage1Done) {
			stage1Done = rec.FinishedAt
		}
		if rec.Stage == 1 && (stage2Start.IsZero() || rec.StartedAt.Before(stage2Start)) {
			stage2Start = rec.StartedAt
		}
	}
	if stage2Start.Sub(stage1Done) < 8*time.Second {
		t.Fatalf("stage 2 started %s after stage 1 finished (bake 8s); the worker died %s after stage 1",
			stage2Start.Sub(stage1Done), killed.Sub(stage1Done))
	}
	for id, n := range b.Sim.Stats().PatchesPerCVM {
		if n != 1 {
			t.Errorf("%s patched %d times", id, n)
		}
	}
}
