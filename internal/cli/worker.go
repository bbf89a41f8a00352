package cli

import (
	"context"
	"flag"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/redisconn"
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
	debug := fs.Bool("debug", false, "log every CVM")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus /metrics and /healthz on this address (e.g. :9090)")
	rate := fs.Float64("rate", 0, "default API requests/s per rollout, across all workers, where the file sets no rate.per_second")
	inFlight := fs.Int("max-in-flight", 0, "default CVMs in flight per rollout, across all workers, where the file sets no rate.max_in_flight")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	c, err := workerClient(e, *version)
	if err != nil {
		return err
	}
	rdb, err := redisconn.OpenPool(ctx, redisURL(e, *redisFlag), *conc+64)
	if err != nil {
		return err
	}
	defer rdb.Close()
	log := logger(e, *debug)
	log.Info("worker started", "concurrency", *conc)
	err = worker.Run(ctx, rdb, worker.Config{Concurrency: *conc, ShutdownTimeout: *drain, API: c, Log: log, ControllerInterval: time.Second,
		Rate: plan.Rate{PerSecond: *rate, MaxInFlight: *inFlight}, MetricsAddr: *metricsAddr})
	log.Info("worker stopped")
	return err
}
