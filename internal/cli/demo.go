package cli

import (
	"context"
	"flag"
	"fmt"
	"github.com/hibiken/asynq"
	"os"
	"path/filepath"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/worker"
)

// The demo's target URLs.
const (
	demoKMS     = "https://kms-new.phala.example:8000"
	demoGateway = "https://gateway-new.phala.example:8000"
)

// demoFile is the rollout the demo runs: every production and staging CVM
// to a new KMS and gateway.
const demoFile = `name: demo-kms-migration
selector:
  names: ["prod-*", "staging-*"]
target:
  kms_urls: ["https://kms-new.phala.example:8000"]
  gateway_urls: ["https://gateway-new.phala.example:8000"]
retry:
  max_attempts: 5
  backoff: {base: 1s, max: 5s}
`

// runDemo runs the whole job in one process: an embedded Redis, the
// simulator on a loopback port, the planner, and in-process workers.
func runDemo(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	var sf simFlags
	sf.register(fs, 1000)
	workers := fs.Int("workers", 2, "in-process worker servers")
	conc := fs.Int("concurrency", 100, "CVMs at once per worker")
	file := fs.String("f", "", "rollout file (default: a built-in KMS migration of prod-* and staging-*)")
	var lf logFlags
	lf.register(fs, false)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	start := time.Now()
	red, err := redisconn.StartEmbedded()
	if err != nil {
		return err
	}
	defer red.Close()
	rdb, err := redisconn.Open(ctx, red.URL())
	if err != nil {
		return err
	}
	defer rdb.Close()

	key := sim.NewAPIKey() // the demo's own; never printed
	simSrv := sf.server(key)
	prefix, stop, err := serveSim(ctx, simSrv, "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer stop()
	client, err := api.New(api.Config{APIKey: key, Prefix: prefix})
	if err != nil {
		return err
	}
	wclient, err := api.New(api.Config{APIKey: key, Prefix: prefix, ReadTries: 1}) // as workerClient
	if err != nil {
		return err
	}

	path := *file
	if path == "" {
		dir, err := os.MkdirTemp("", "rollout-demo")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "demo.yaml")
		if err := os.WriteFile(path, []byte(demoFile), 0o600); err != nil {
			return err
		}
	}
	f, err := plan.Load(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "Demo: %d simulated CVMs, embedded Redis (miniredis), %d workers x %d.\n\n", sf.cvms, *workers, *conc)
	p, err := plan.Build(ctx, client, f, 0)
	if err != nil {
		return err
	}
	printPlan(e.Stdout, p, 5)
	planned := time.Since(start)

	a, err := control.New(rdb).Apply(ctx, p, "demo", time.Now(), control.ApplyOptions{})
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "\nApplied rollout %s: %d tasks queued. Workers running:\n\n", a.ID, a.Queued)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, *workers)
	for i := range *workers {
		go func() {
			done <- worker.Run(wctx, rdb, worker.Config{Concurrency: *conc, API: wclient, Name: fmt.Sprintf("demo-worker-%d", i+1),
				Log: log, ControllerInterval: 200 * time.Millisecond, ShutdownTimeout: 5 * time.Second})
		}()
	}
	applyStart := time.Now()
	// Let the workers register first, or the watch's first line warns
	// that none is alive.
	insp := asynq.NewInspectorFromRedisClient(rdb)
	for end := time.Now().Add(5 * time.Second); liveWorkers(insp) < 1 && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	r, err := watch(ctx, e, store.New(rdb), a.ID, watchOpts{format: "table", untilPaused: true, every: 500 * time.Millisecond})
	cancel()
	for range *workers {
		<-done
	}
	if err != nil {
		return err
	}
	stats := simSrv.Stats()
	fmt.Fprintf(e.Stdout, "\nThe simulator saw %d requests and %d PATCHes (%d answered 429, %d injected 5xx).\n",
		stats.Requests, stats.Patches, stats.Throttled, stats.ServerErrors)
	fmt.Fprintf(e.Stdout, "Planned in %s, rolled out in %s, %s in all.\n", planned.Round(time.Millisecond),
		time.Since(applyStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if r.Counts[store.Failed] > 0 {
		fmt.Fprintf(e.Stdout, "%d CVMs failed; in a real run: `rollout report %s --state failed`.\n", r.Counts[store.Failed], a.ID)
	}
	return nil
}
