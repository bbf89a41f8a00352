package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/dashboard"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/redisconn"
	build "github.com/phalafleet/rollout/internal/version"
	"github.com/phalafleet/rollout/internal/worker"
)

// RunWorker is `worker` (cmd/worker and `rollout worker`): process tasks
// until ctx ends (SIGTERM), then drain in-flight ones.
func RunWorker(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	redisFlag := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	conc := fs.Int("concurrency", 50, "CVMs processed at once by this worker")
	drain := fs.Duration("shutdown-timeout", worker.DefaultShutdownTimeout, "how long in-flight CVMs may finish after SIGTERM")
	version := fs.String("api-version", "", "X-Phala-Version to send")
	var lf logFlags
	lf.register(fs, true)
	var httpAddr string
	fs.StringVar(&httpAddr, "http-addr", "", "serve /metrics (Prometheus), /healthz, /readyz and the read-only web dashboard on this address (e.g. :9090)")
	fs.StringVar(&httpAddr, "metrics-addr", "", "the older name of --http-addr")
	rate := fs.Float64("rate", 0, "default API requests/s per rollout, across all workers, where the file sets no rate.per_second")
	inFlight := fs.Int("max-in-flight", 0, "default CVMs in flight per rollout, across all workers, where the file sets no rate.max_in_flight")
	showVersion := fs.Bool("version", false, "print the version and exit")
	keyFile := keyFileFlag(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(e.Stdout, "worker", build.Get())
		return nil
	}
	e, err := e.withKeyFile(*keyFile)
	if err != nil {
		return err
	}
	if *conc < 1 {
		return usageErr("worker: --concurrency %d: must be at least 1", *conc)
	}
	log, err := lf.logger(e)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	c, err := workerClient(e, *version)
	if err != nil {
		return err
	}
	// A key the API refuses would fail every CVM the worker touches: stop
	// here instead. Any other trouble (the API down) is the queue's to ride
	// out, so the worker starts anyway.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	kerr := c.CheckKey(cctx)
	cancel()
	if st := api.StatusOf(kerr); st == 401 || st == 403 {
		return fmt.Errorf("worker: %w", keyHint(kerr))
	}
	rdb, err := redisconn.OpenPool(ctx, redisURL(e, *redisFlag), *conc+64)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if kerr != nil {
		log.Warn("could not check the API key; starting anyway", "err", kerr)
	}
	log.Info("worker started", "concurrency", *conc)
	err = worker.Run(ctx, rdb, worker.Config{Concurrency: *conc, ShutdownTimeout: *drain, API: c, Log: log, ControllerInterval: time.Second,
		Rate: plan.Rate{PerSecond: *rate, MaxInFlight: *inFlight}, HTTPAddr: httpAddr,
		Root: dashboard.New(dashboard.Config{RDB: rdb, Log: log})}) // read-only: actions need `rollout dashboard --token-file`
	log.Info("worker stopped")
	return err
}
